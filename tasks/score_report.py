"""What a complete scoring sends to Prefect: its artifacts (patient calls, cohort overview, report
links, per-type rates) and an event per AML_SUSPECTED patient, patient ids as :mod:`tasks.privacy` says."""

from __future__ import annotations

import numpy as np
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.settings import PREFECT_API_URL

from aml_model.aggregate import RESEARCH_NOTE
from aml_model.config import SummaryConfig
from tasks.events import emit_aml_suspected
from tasks.links import index_link, reports_markdown
from tasks.privacy import prefect_patients_table
from tasks.report import cohort_type_rates
from tasks.store_layout import ScoringPaths

__all__ = ["overview_markdown", "publish_scoring"]


def overview_markdown(
    patients, scoring: ScoringPaths, model_version: str, config: SummaryConfig
) -> str:
    """The cohort-overview markdown; ``patients`` as Prefect may see it (:func:`prefect_patients_table`)."""
    counts = patients["call"].value_counts().to_dict()
    lines = [
        f"# AML smear scoring: run {scoring.run_id}, scoring {scoring.score_id}",
        "",
        f"**{RESEARCH_NOTE}**",
        "",
        f"Model `{model_version}`, threshold {config.threshold:g}, blast cut-off {config.blast_cutoff:.0%}, "
        f"minimum {config.min_cells} scored cells.",
        "",
        "| call | patients |",
        "|---|---|",
    ]
    lines += [
        f"| {call} | {counts.get(call, 0)} |"
        for call in ("AML_SUSPECTED", "INDETERMINATE", "NOT_SUSPECTED", "INSUFFICIENT_CELLS")
    ]
    lines += [
        "",
        "| patient | scored | blast-like | fraction (95% CI) | call | QC |",
        "|---|---|---|---|---|---|",
    ]
    for row in patients.itertuples():
        fraction = (
            "n/a"
            if np.isnan(row.blast_fraction)
            else f"{row.blast_fraction:.1%} ({row.ci_low:.1%}-{row.ci_high:.1%})"
        )
        lines.append(
            f"| {row.patient_id} | {row.n_scored} | {row.n_blast_like} | {fraction} | {row.call} | "
            f"{row.qc_flags or '-'} |"
        )
    return "\n".join(lines)


def _artifact_url(artifact_id) -> str:
    """The artifact's URL in the Prefect API (the UI has no address of its own for one artifact,
    ``prefect.utilities.urls``); its id alone without an API."""
    api = PREFECT_API_URL.value()
    return f"{api.rstrip('/')}/artifacts/{artifact_id}" if api else str(artifact_id)


def publish_scoring(
    scoring: ScoringPaths, patients, model_version: str, config: SummaryConfig
) -> dict[str, str]:
    """What a complete scoring sends to Prefect: its artifacts (patient calls, cohort overview, report
    links, per-type rates) and an event per AML_SUSPECTED patient, patient ids as :mod:`tasks.privacy` says.

    Returns:
        The URLs of the patient-calls and report-index artifacts, by key, for the flow's last log line.
    """
    where = f"run {scoring.run_id}, scoring {scoring.score_id}"
    shown = prefect_patients_table(patients)
    calls = create_table_artifact(
        key="patient-calls",
        table=shown.astype(object).where(shown.notna(), None).to_dict(orient="records"),
        description=f"per-patient AML calls, {where}",
    )
    create_markdown_artifact(
        key="cohort-overview",
        markdown=overview_markdown(shown, scoring, model_version, config),
        description=f"cohort overview, {where}",
    )
    index = index_link(scoring)
    expiry = f"; {index.expiry_note}" if index.expiry_note else ""
    reports = create_link_artifact(
        key="report-index",
        link=index.url,
        link_text=f"Cohort reports, {where}",
        description=f"the cohort's HTML reports, {where}{expiry}",
    )
    create_markdown_artifact(
        key="patient-reports",
        markdown=reports_markdown(scoring, patients, index),
        description=f"per-patient HTML reports, {where}{expiry}",
    )
    rates = cohort_type_rates(scoring.store, scoring.cells_table, config.threshold)
    if len(rates):
        create_table_artifact(
            key="per-type-rates",
            table=rates.astype(object).where(rates.notna(), None).to_dict(orient="records"),
            description=f"blast-like rate per cell type, {where}",
        )
    emit_aml_suspected(scoring, patients, model_version, index.url)
    return {"patient-calls": _artifact_url(calls), "report-index": _artifact_url(reports)}
