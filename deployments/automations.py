"""Example automations: aml-smear's events sent to a notification block (webhook, Slack, e-mail...).

    python deployments/automations.py --block custom-webhook/aml-alerts    # create or replace them
    python deployments/automations.py --block custom-webhook/aml-alerts --dry-run   # print the JSON

Three automations, one per event of :mod:`tasks.events`, each an ``EventTrigger`` (reactive, on
the first event) with a ``SendNotification`` action through the block named by ``--block``
(``<block type slug>/<block name>``, saved beforehand; deployments/README.md shows how). Running
this again replaces the automations of the same names. ``--dry-run`` prints each as JSON for
``prefect automation create --from-json`` instead, without a server.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from uuid import UUID

from prefect.automations import AutomationCore, EventTrigger, Posture, SendNotification

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from tasks.events import MODEL_PROMOTED, NIGHTLY_FAILED, PATIENT_AML_SUSPECTED  # noqa: E402

__all__ = ["automations", "install"]

_NOTE = "Research use only: not a diagnosis."
# Jinja templates: `event` is the event that fired the automation (tasks/events.py lists its payload).
_MESSAGES = {
    PATIENT_AML_SUSPECTED: (
        "aml-smear: patient {{ event.payload.patient_id }} AML suspected",
        "Patient {{ event.payload.patient_id }} was called AML_SUSPECTED: {{ event.payload.n_blast_like }} of "
        "{{ event.payload.n_scored }} cells blast-like ({{ (event.payload.ci_low * 100) | round(1) }}-"
        "{{ (event.payload.ci_high * 100) | round(1) }}% at 95%), model {{ event.payload.model_version }}, "
        "run {{ event.payload.run_id }}, scoring {{ event.payload.score_id }}.\n"
        "Reports: {{ event.payload.report }}\n" + _NOTE,
    ),
    MODEL_PROMOTED: (
        "aml-smear: model {{ event.payload.version }} is the champion",
        "{{ event.payload.version }} replaced {{ event.payload.previous or 'no champion' }} in "
        "{{ event.payload.store }} ({{ event.payload.by }}): {{ event.payload.reason }}",
    ),
    NIGHTLY_FAILED: (
        "aml-smear: the nightly retrain failed",
        "Flow run {{ event.payload.flow_run_name }} ({{ event.payload.flow_run_id }}) ended {{ event.payload.state }} "
        "after {{ event.payload.run_count }} attempt(s): {{ event.payload.message }}\n"
        "prefect flow-run inspect {{ event.payload.flow_run_id }}",
    ),
}


def automations(block_document_id: UUID | str) -> list[AutomationCore]:
    """One automation per aml-smear event, notifying through the block ``block_document_id``."""
    return [
        AutomationCore(
            name=f"aml-smear {event}",
            description=f"Notify on {event} (deployments/automations.py)",
            trigger=EventTrigger(expect={event}, posture=Posture.Reactive, threshold=1),
            actions=[
                SendNotification(
                    block_document_id=UUID(str(block_document_id)), subject=subject, body=body
                )
            ],
        )
        for event, (subject, body) in _MESSAGES.items()
    ]


def install(block: str) -> list[UUID]:
    """Create the automations for the notification block ``<type slug>/<name>`` on the configured
    Prefect API, replacing those of the same names; returns their ids."""
    from prefect.blocks.core import Block
    from prefect.client.orchestration import get_client

    block_id = Block.load(block)._block_document_id
    created = []
    with get_client(sync_client=True) as client:
        for automation in automations(block_id):
            for old in client.read_automations_by_name(automation.name):
                client.delete_automation(old.id)
            created.append(client.create_automation(automation))
    return created


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--block",
        required=True,
        help="notification block, <type slug>/<name>, e.g. custom-webhook/aml-alerts",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the automations as JSON (block id 0...0 to replace) instead of creating them",
    )
    args = parser.parse_args(argv)
    if args.dry_run:
        for automation in automations(UUID(int=0)):
            print(json.dumps(automation.model_dump(mode="json")))
        return
    for automation, automation_id in zip(
        automations(UUID(int=0)), install(args.block), strict=True
    ):
        print(f"{automation.name}: {automation_id}")


if __name__ == "__main__":
    main()
