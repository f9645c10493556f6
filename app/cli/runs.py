"""``aml-smear runs``: the run store's ingest runs and scorings, listed, shown and pruned from the command line."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from app.cli.common import listed, one_line_errors, takes_store

if TYPE_CHECKING:
    from tasks.store import Store

__all__ = ["call_settings", "echo_patients", "runs"]


def call_settings(settings: dict) -> str:
    """The settings that make a scoring's calls, in words: two scorings of a run differ here or in the model.

    ``settings`` as a score.json or score-smears' result holds them; a missing one reads "?".
    """

    def value(key: str, form: str = "{}") -> str:
        return "?" if settings.get(key) is None else form.format(settings[key])

    words = (
        f"threshold {value('threshold', '{:g}')}, blast cut-off {value('blast_cutoff', '{:.0%}')}, "
        f"min cells {value('min_cells')}"
    )
    if settings.get("site"):
        words += f", site {settings['site']} at its {value('site_operating_point')} operating point (calibrated scale)"
    return words


def echo_patients(patients: list[dict]) -> None:
    """The per-patient calls as a table, then the research-use note."""
    from aml_model.aggregate import RESEARCH_NOTE

    click.echo(f"{'patient':<16} {'scored':>6} {'blast-like':>10} {'fraction (95% CI)':>24}  call")
    for row in patients:
        fraction = (
            "n/a"
            if row["n_scored"] == 0
            else f"{row['blast_fraction']:.1%} ({row['ci_low']:.1%}-{row['ci_high']:.1%})"
        )
        # Scored with a site: the corrected fraction after the call (NaN where the site's rates are unknown).
        corrected = (
            ""
            if "blast_fraction_corrected" not in row or row["n_scored"] == 0
            else f"  corrected {row['blast_fraction_corrected']:.1%} ({row['corrected_ci_low']:.1%}-"
            f"{row['corrected_ci_high']:.1%})"
        )
        click.echo(
            f"{row['patient_id']:<16} {row['n_scored']:>6} {row['n_blast_like']:>10} {fraction:>24}  "
            f"{row['call']}{corrected}"
        )
    click.echo(RESEARCH_NOTE)


@click.group("runs", context_settings={"help_option_names": ["-h", "--help"]})
def runs() -> None:
    """The run store: list the runs and their scorings, show a scoring's result, prune old ones."""


@runs.command("list")
@takes_store
def list_command(store: Store) -> None:
    """List the ingest runs, each with its scorings (model, settings, complete or not)."""
    from tasks.run_admin import list_runs, runs_root
    from tasks.runs import REUSED_FROM

    entries = listed(list_runs, store, f"no runs in {runs_root(store)}")
    if not entries:
        return
    for entry in entries:
        when = entry.last_activity.strftime("%Y-%m-%d %H:%M") if entry.last_activity else "unknown"
        state = "old layout, not read" if entry.legacy else _state(entry.complete, entry.failure)
        cells = f"{entry.cells} cells" if entry.cells is not None else "cells n/a"
        click.echo(f"{entry.run_id}  {state}, {cells}, last activity {when}")
        for scoring in entry.scorings:
            settings = scoring["settings"] or {}
            click.echo(
                f"  scoring {scoring['score_id']}  {_state(scoring['complete'], scoring['failure'])}"
                f"  model {settings.get('model_version', '?')}, {call_settings(settings)}"
                + (
                    f", probabilities of {settings[REUSED_FROM]}"
                    if settings.get(REUSED_FROM)
                    else ""
                )
            )


def _state(complete: bool, failure: dict | None) -> str:
    """complete, failed (with its reason), or incomplete: interrupted (killed, nothing recorded) or running."""
    if complete:
        return "complete"
    return f"failed ({failure['reason']})" if failure else "incomplete"


@runs.command("show")
@click.argument("run")
@click.option(
    "--score",
    "score_id",
    default=None,
    help="The scoring of RUN [default: its latest complete one].",
)
@takes_store
def show_command(run: str, score_id: str | None, store: Store) -> None:
    """Show a finished scoring of RUN: its settings, the per-patient calls, the quarantined files and the reports."""
    from tasks.run_admin import show_scoring
    from tasks.runs import REUSED_FROM

    with one_line_errors():
        shown = show_scoring(store, run, score_id)
    settings = shown.settings
    click.echo(
        f"run {shown.scoring.run_id}, scoring {shown.scoring.score_id}, completed "
        f"{shown.completed_at or 'at an unknown time'} -> {shown.scoring.root}"
    )
    precision = settings.get("precision", "?")
    if shown.precisions and list(shown.precisions) != [precision]:
        precision += f" (scored in {', '.join(shown.precisions)})"
    click.echo(
        f"model {settings.get('model_version', '?')}, {call_settings(settings)}, precision {precision}"
    )
    if settings.get(REUSED_FROM):
        click.echo(
            f"probabilities copied from scoring {settings[REUSED_FROM]} (the same model, precision and cells)"
        )
    echo_patients(shown.patients.to_dict(orient="records"))
    if len(shown.quarantine):
        click.echo(
            f"{len(shown.quarantine)} quarantined inputs ({shown.scoring.quarantine_table}):"
        )
        for row in shown.quarantine.itertuples():
            click.echo(f"  {row.patient_id}  {row.source_uri}: {row.reason}")
    else:
        click.echo("no quarantined inputs")
    click.echo(
        f"patient reports: {shown.report}"
        if shown.report
        else f"no reports in {shown.scoring.reports_root}: rebuild them with "
        f"`aml-smear report {run} --store {store.url} --score {shown.scoring.score_id}`"
    )


@runs.command("prune")
@click.option(
    "--older-than",
    "older_than",
    type=click.FloatRange(min=0),
    required=True,
    metavar="DAYS",
    help="Remove runs whose last completion (or start) is older than DAYS days.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@takes_store
def prune_command(older_than: float, dry_run: bool, store: Store) -> None:
    """Remove old runs with all their scorings; runs a registered model was trained on are kept."""
    from tasks.run_admin import prune_runs

    with one_line_errors():
        plan = prune_runs(store, older_than, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    click.echo(
        f"{verb} {len(plan.remove)} runs" + (f": {', '.join(plan.remove)}" if plan.remove else "")
    )
    for run_id, reason in sorted(plan.kept_old.items()):
        click.echo(f"kept {run_id}: {reason}")
