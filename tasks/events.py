"""The Prefect events aml-smear emits, for automations to act on (``deployments/automations.py``).

- ``aml-smear.patient.aml-suspected``: a scoring completed with a patient called AML_SUSPECTED, one
  event each; resource ``aml-smear.patient.<id>``, the scoring and model related.
- ``aml-smear.model.promoted``: a retrain (the nightly), or ``aml-smear models promote``/``rollback``
  with a Prefect API, made a model the champion; resource
  ``aml-smear.model.<version>``, the previous champion related.
- ``aml-smear.nightly.failed``: the deployed nightly retrain failed or crashed (it has no flow
  retry); resource ``prefect.flow-run.<id>``, its state message in the payload.

Patient ids, in resource ids and payloads, pass through :func:`tasks.privacy.prefect_patient_id`.
Emitted inside a flow run, an event also names the run, its flow and deployment as related
resources (Prefect adds them). Events are sent in the background; ``emit_event`` returns at once,
and does nothing without a Prefect API.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect.events import emit_event

from aml_model.aggregate import RESEARCH_NOTE
from tasks.privacy import prefect_patient_id
from tasks.store import Store
from tasks.store_layout import ScoringPaths

__all__ = [
    "EVENTS",
    "MODEL_PROMOTED",
    "NIGHTLY_FAILED",
    "PATIENT_AML_SUSPECTED",
    "emit_aml_suspected",
    "emit_model_promoted",
    "emit_nightly_failed",
]

PATIENT_AML_SUSPECTED = "aml-smear.patient.aml-suspected"
MODEL_PROMOTED = "aml-smear.model.promoted"
NIGHTLY_FAILED = "aml-smear.nightly.failed"
EVENTS = (PATIENT_AML_SUSPECTED, MODEL_PROMOTED, NIGHTLY_FAILED)


def _resource(kind: str, name: str, role: str | None = None) -> dict[str, str]:
    resource = {"prefect.resource.id": f"aml-smear.{kind}.{name}", "prefect.resource.name": name}
    return resource | ({"prefect.resource.role": role} if role else {})


def emit_aml_suspected(
    scoring: ScoringPaths, patients: pd.DataFrame, model_version: str, report: str
) -> int:
    """One ``aml-smear.patient.aml-suspected`` per AML_SUSPECTED patient of a complete scoring.

    Args:
        scoring: the scoring, complete.
        patients: its per-patient table (real ids: they are pseudonymised here).
        model_version: the model that scored it.
        report: a link to the cohort index, as the artifacts give it.

    Returns:
        How many events were emitted.
    """
    suspected = patients[patients["call"] == "AML_SUSPECTED"]
    for row in suspected.itertuples():
        patient = prefect_patient_id(row.patient_id)
        emit_event(
            event=PATIENT_AML_SUSPECTED,
            resource=_resource("patient", patient),
            related=[
                _resource("scoring", f"{scoring.run_id}/{scoring.score_id}", "scoring"),
                _resource("model", model_version, "model"),
            ],
            payload={
                "patient_id": patient,
                "run_id": scoring.run_id,
                "score_id": scoring.score_id,
                "model_version": model_version,
                "call": row.call,
                "n_scored": int(row.n_scored),
                "n_blast_like": int(row.n_blast_like),
                "blast_fraction": float(row.blast_fraction),
                "ci_low": float(row.ci_low),
                "ci_high": float(row.ci_high),
                "report": report,
                "note": RESEARCH_NOTE,
            },
        )
    return len(suspected)


def emit_model_promoted(
    store: Store, version: str, previous: str | None, reason: str, by: str
) -> None:
    """``aml-smear.model.promoted``: ``version`` is now the champion of ``store``'s registry.

    Args:
        store: the store whose registry it is; the payload records its URL.
        by: what promoted it: "retrain", "models promote" or "models rollback".
    """
    related = [_resource("model", previous, "previous-champion")] if previous else []
    emit_event(
        event=MODEL_PROMOTED,
        resource=_resource("model", version),
        related=related,
        payload={
            "version": version,
            "previous": previous,
            "reason": reason,
            "store": store.url,
            "by": by,
        },
    )


def emit_nightly_failed(flow: Any, flow_run: Any, state: Any) -> None:
    """``aml-smear.nightly.failed``: a flow ``on_failure`` hook for the deployed nightly retrain.

    Prefect calls it when the run fails (the nightly has no flow retry); the payload carries
    the run's one-line reason (its state message).
    """
    emit_event(
        event=NIGHTLY_FAILED,
        resource={
            "prefect.resource.id": f"prefect.flow-run.{flow_run.id}",
            "prefect.resource.name": flow_run.name,
        },
        related=[_resource("flow", flow.name, "flow")],
        payload={
            "flow": flow.name,
            "flow_run_id": str(flow_run.id),
            "flow_run_name": flow_run.name,
            "deployment_id": str(flow_run.deployment_id) if flow_run.deployment_id else None,
            "state": state.name,
            "message": state.message,
            "run_count": flow_run.run_count,
        },
    )
