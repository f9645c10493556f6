"""``aml-smear models``: the model registry of a store, operated from the command line.

The operations are :mod:`tasks.registry_admin` and :mod:`tasks.registry` (no Prefect, no
TensorFlow); promote and rollback replace ``models/champion.json`` in one write, as the flows do.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

import click

from app.cli.common import listed, one_line_errors, takes_store

if TYPE_CHECKING:
    from tasks.store import Store

__all__ = ["models"]


def _number(value, integer: bool = False) -> str:
    """A metric with three decimals (a count as an integer); "n/a" where a card has none."""
    value = math.nan if value is None else float(value)
    if math.isnan(value):
        return "n/a"
    return f"{value:.0f}" if integer else f"{value:.3f}"


@click.group("models", context_settings={"help_option_names": ["-h", "--help"]})
def models() -> None:
    """The model registry of a store: list, show, compare, promote, roll back, prune."""


@models.command("list")
@takes_store
def list_command(store: Store) -> None:
    """List the registered versions, oldest first, with their test metrics and status."""
    from tasks.registry import models_root
    from tasks.registry_admin import list_models

    entries = listed(
        list_models,
        store,
        f"no models in {models_root(store)}: train one with `aml-smear retrain SOURCE --store {store.url}`",
    )
    if not entries:
        return
    click.echo(
        f"{'version':<26} {'registered':<16} {'recipe':<7} {'ROC AUC':>7} {'sensitivity':>11} "
        f"{'specificity':>11} {'test cells':>10}  status"
    )
    for entry in entries:
        card = entry.card or {}
        metrics = card.get("metrics") or {}
        registered = entry.registered_at[:16].replace("T", " ")
        click.echo(
            f"{entry.version:<26} {registered:<16} {card.get('recipe', '-'):<7} "
            f"{_number(metrics.get('roc_auc')):>7} {_number(metrics.get('sensitivity')):>11} "
            f"{_number(metrics.get('specificity')):>11} {_number(metrics.get('n'), integer=True):>10}  "
            f"{entry.status}" + (f": {entry.problem}" if entry.problem else "")
        )


@models.command("show")
@click.argument("version")
@takes_store
@click.option("--json", "as_json", is_flag=True, help="Print the whole model card as JSON.")
def show_command(version: str, store: Store, as_json: bool) -> None:
    """Show what the card of VERSION (or `champion`) records."""
    from tasks.registry import require_registered
    from tasks.registry_admin import METRICS, card_facts, model_status, resolve_version

    with one_line_errors():
        version = resolve_version(store, version)
        card = require_registered(store, version)
        status = model_status(store, version)
    if as_json:
        click.echo(json.dumps(card, indent=2, sort_keys=True, default=str))
        return
    click.echo(f"model {version} ({status})")
    for label, value in card_facts(card):
        click.echo(f"  {label + ':':<15}{value}")
    metrics = card.get("metrics") or {}
    click.echo(
        f"  {'test metrics:':<15}"
        + ", ".join(f"{name} {_number(metrics.get(name))}" for name in METRICS)
        + f" on {metrics.get('n', 'n/a')} cells"
    )
    promotion = card.get("promotion") or {}
    if promotion:
        click.echo(
            f"  {'at training:':<15}{'promoted' if promotion.get('promoted') else 'kept as a candidate'}: "
            f"{promotion.get('reason', '')}"
        )


@models.command("compare")
@click.argument("version_a")
@click.argument("version_b")
@takes_store
def compare_command(version_a: str, version_b: str, store: Store) -> None:
    """Print the cards of VERSION_A and VERSION_B (or `champion`) side by side, test metrics included."""
    from tasks.registry import require_registered
    from tasks.registry_admin import compare_cards, resolve_version

    with one_line_errors():
        version_a, version_b = (resolve_version(store, v) for v in (version_a, version_b))
        facts, metrics, same_cells = compare_cards(
            require_registered(store, version_a), require_registered(store, version_b)
        )
    width = max(26, *(len(value) for _, a, b in facts for value in (a, b)))
    click.echo(f"{'':<14} {'A ' + version_a:<{width}} {'B ' + version_b:<{width}}")
    for label, a, b in facts:
        click.echo(f"{label:<14} {a:<{width}} {b:<{width}}")
    click.echo(f"{'test metric':<14} {'A':>{width}} {'B':>{width}} {'B - A':>8}")
    for name, a, b in metrics:
        difference = b - a
        integer = name == "test cells"
        click.echo(
            f"{name:<14} {_number(a, integer):>{width}} {_number(b, integer):>{width}} "
            f"{'n/a' if math.isnan(difference) else f'{difference:+.{0 if integer else 3}f}':>8}"
        )
    if not same_cells:
        click.echo(
            "note: trained on different data or splits, so each was tested on its own test cells; "
            "the metrics are not a paired comparison"
        )


@models.command("promote")
@click.argument("version")
@takes_store
@click.option(
    "--reason",
    default="promoted by hand (aml-smear models promote)",
    show_default=True,
    help="Recorded in the champion pointer.",
)
def promote_command(version: str, store: Store, reason: str) -> None:
    """Make VERSION the champion (its card and model file are checked first; the pointer is replaced
    in one write and the old champion kept for `rollback`)."""
    from tasks.registry import RegistryError, read_champion, set_champion

    with one_line_errors():
        try:
            current = read_champion(store)
        except RegistryError:  # an unreadable pointer: promoting replaces it
            current = None
        if current is not None and current["version"] == version:
            click.echo(f"{version} is already the champion of {store.url}: nothing changed")
            return
        set_champion(store, version, reason=reason)
    _announce(store, version, current["version"] if current else None, reason, "models promote")
    click.echo(
        f"champion of {store.url}: {version}" + (f" (was {current['version']})" if current else "")
    )


@models.command("rollback")
@takes_store
def rollback_command(store: Store) -> None:
    """Make the previous champion the champion again."""
    from tasks.registry import rollback_champion

    with one_line_errors():
        was, now = rollback_champion(store)
    _announce(store, now, was, f"rolled back from {was}", "models rollback")
    click.echo(f"champion of {store.url}: {now} (rolled back from {was})")


def _announce(store: Store, version: str, previous: str | None, reason: str, by: str) -> None:
    """``aml-smear.model.promoted`` on the Prefect API that PREFECT_API_URL names; nothing without one
    (no temporary server is started for it). Prefect sends queued events before the process exits."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        from tasks.events import emit_model_promoted

        emit_model_promoted(store, version, previous, reason, by)


@models.command("prune")
@click.option(
    "--keep",
    "keep_newest",
    type=click.IntRange(min=0),
    required=True,
    help="How many of the newest versions to keep, besides the champion.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@takes_store
def prune_command(keep_newest: int, dry_run: bool, store: Store) -> None:
    """Remove all versions but the champion, the previous champion, the --keep newest, and any a
    scoring under runs/ records."""
    from tasks.registry_admin import prune_models

    with one_line_errors():
        plan = prune_models(store, keep_newest, dry_run=dry_run)
    for version, why in plan.keep.items():
        click.echo(f"keep   {version}: {why}")
    for version in plan.remove:
        click.echo(f"{'would remove' if dry_run else 'removed'} {version}")
    verb = "would remove" if dry_run else "removed"
    click.echo(
        f"{verb} {len(plan.remove)} version(s), kept {len(plan.keep)}"
        + (" (dry run)" if dry_run else "")
    )
