"""``aml-smear runs``: the run store's ingest runs and scorings, listed and pruned from the command line."""

from __future__ import annotations

import click

from flows.cli_models import _listed, _one_line_errors, _options, _store_options

__all__ = ["runs"]


@click.group("runs", context_settings={"help_option_names": ["-h", "--help"]})
def runs() -> None:
    """The run store: list the runs and their scorings, prune old ones."""


@runs.command("list")
@_store_options
def list_command(store: str, s3_endpoint_url: str | None) -> None:
    """List the ingest runs, each with its scorings (model, settings, complete or not)."""
    from tasks.run_admin import list_runs, runs_root

    entries = _listed(list_runs, store, s3_endpoint_url, f"no runs in {runs_root(store)}")
    if not entries:
        return
    for entry in entries:
        when = entry.last_activity.strftime("%Y-%m-%d %H:%M") if entry.last_activity else "unknown"
        state = "old layout, not read" if entry.legacy else _state(entry.complete, entry.failure)
        cells = f"{entry.cells} cells" if entry.cells is not None else "cells n/a"
        click.echo(f"{entry.run_id}  {state}, {cells}, last activity {when}")
        for scoring in entry.scorings:
            settings = scoring["settings"] or {}
            click.echo(f"  scoring {scoring['score_id']}  {_state(scoring['complete'], scoring['failure'])}"
                       f"  model {settings.get('model_version', '?')}, threshold {settings.get('threshold', '?')}, "
                       f"min_cells {settings.get('min_cells', '?')}"
                       + (f", site {settings['site']}" if settings.get("site") else ""))


def _state(complete: bool, failure: dict | None) -> str:
    """complete, failed (with its reason), or incomplete: interrupted (killed, nothing recorded) or running."""
    if complete:
        return "complete"
    return f"failed ({failure['reason']})" if failure else "incomplete"


@runs.command("prune")
@click.option("--older-than", "older_than", type=click.FloatRange(min=0), required=True, metavar="DAYS",
              help="Remove runs whose last completion (or start) is older than DAYS days.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@_store_options
def prune_command(older_than: float, dry_run: bool, store: str, s3_endpoint_url: str | None) -> None:
    """Remove old runs with all their scorings; runs a registered model was trained on are kept."""
    from tasks.run_admin import prune_runs

    with _one_line_errors():
        plan = prune_runs(store, older_than, _options(store, s3_endpoint_url), dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {len(plan.remove)} runs" + (f": {', '.join(plan.remove)}" if plan.remove else ""))
    for run_id, reason in sorted(plan.kept_old.items()):
        click.echo(f"kept {run_id}: {reason}")
