"""The ``score-smears`` flow: ingest -> inference on Dask workers -> cell table -> patient calls."""

from __future__ import annotations

import dataclasses

import numpy as np
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from aml_model.aggregate import RESEARCH_NOTE
from aml_model.config import SummaryConfig
from aml_model.report import cell_type_rates, patients_to_explain
from flows.ingest import collect_ingest, finish_ingest, plan_ingest, start_ingest, submit_ingest_shard
from flows.parameters import Layout, Positive, Precision, Probability, RunId, SiteName, require_existing
from flows.progress import results_with_progress
from flows.runner import in_order
from tasks import storage
from tasks.calibration import read_site_calibration
from tasks.explain import clear_explanations, explain_patient
from tasks.predict import score_shard
from tasks.registry import resolve_model
from tasks.report import index_url, reports_markdown, write_reports
from tasks.summarise import write_scored_tables

__all__ = ["score_smears"]


def _overview(patients, run_id: str, model_version: str, config: SummaryConfig) -> str:
    counts = patients["call"].value_counts().to_dict()
    lines = [f"# AML smear scoring: run {run_id}", "", f"**{RESEARCH_NOTE}**", "",
             f"Model `{model_version}`, threshold {config.threshold:g}, blast cut-off {config.blast_cutoff:.0%}, "
             f"minimum {config.min_cells} scored cells.", "", "| call | patients |", "|---|---|"]
    lines += [f"| {call} | {counts.get(call, 0)} |" for call in ("AML_SUSPECTED", "INDETERMINATE", "NOT_SUSPECTED",
                                                                  "INSUFFICIENT_CELLS")]
    lines += ["", "| patient | scored | blast-like | fraction (95% CI) | call | QC |", "|---|---|---|---|---|---|"]
    for row in patients.itertuples():
        fraction = "n/a" if np.isnan(row.blast_fraction) else \
            f"{row.blast_fraction:.1%} ({row.ci_low:.1%}-{row.ci_high:.1%})"
        lines.append(f"| {row.patient_id} | {row.n_scored} | {row.n_blast_like} | {fraction} | {row.call} | "
                     f"{row.qc_flags or '-'} |")
    return "\n".join(lines)


@flow(name="score-smears", validate_parameters=True)
def score_smears(
    source: str,
    store: str,
    model: str = "champion",
    run_id: RunId | None = None,
    layout: Layout = "auto",
    batch_size: Positive = 64,
    threshold: Probability = 0.5,
    blast_cutoff: Probability = 0.2,
    min_cells: Positive = 100,
    precision: Precision = "float32",
    chunk_cells: Positive = 64,
    chunks_per_task: Positive = 4,
    s3_endpoint_url: str | None = None,
    explain: bool = True,
    explain_top_k: Positive = 12,
    site: SiteName | None = None,
) -> dict:
    """Score every cell of ``source`` and call each patient.

    Every parameter is checked (its type, then that the source exists) before anything is
    written, so a wrong value never touches a finished run (:mod:`flows.parameters`).

    Args:
        source: folder or manifest of cell images (any fsspec URL).
        store: run store URL; the model registry is its ``models/``.
        model: "champion", a registered version, or a .keras path/URL.
        run_id: the run to write; by default the source name, a hash of its inputs and the
            model version, so the same source and model map to the same run.
        layout, chunk_cells, chunks_per_task, s3_endpoint_url: as for ``ingest``; each
            scoring task takes the chunks one decoding task wrote, as soon as they are written.
        batch_size: cells per forward pass on a worker.
        threshold, blast_cutoff, min_cells: the per-patient call rule (SummaryConfig).
        precision: "float32", "bfloat16" (CPUs with AMX) or "float16" (GPUs).
        explain: Grad-CAM overlays of the most blast-like cells of each AML_SUSPECTED or
            INDETERMINATE patient, computed on the workers, shown in the reports.
        explain_top_k: cells per patient in the reports' galleries (and Grad-CAM).
        site: score with this site's calibration of the model (``aml-smear calibrate``): the
            calibrated probability (column probability_calibrated) and the site's threshold make
            the calls; refused before anything is written when the site has no calibration for
            this model version. ``threshold`` must then stay at its default.

    Returns:
        run_id, run root, model version, counts, the per-patient calls and the reports' index page.
    """
    logger = get_run_logger()
    # The parameters' types were checked before this line; now that the source exists.
    require_existing([source], "source", s3_endpoint_url)
    config = SummaryConfig(threshold=threshold, blast_cutoff=blast_cutoff, min_cells=min_cells)
    store_options = storage.storage_options_for(store, s3_endpoint_url)
    model_ref = resolve_model(model, store, store_options)
    calibration = None
    if site is not None:
        # Before anything is written: a site calibrated for another model version is refused here.
        if threshold != 0.5:
            message = f"threshold={threshold:g} and site={site!r} both given: the site's calibration sets the threshold"
            raise ValueError(message)
        calibration = read_site_calibration(store, site, model_ref.version, store_options)
        threshold = calibration.threshold
        config = dataclasses.replace(config, threshold=threshold)
        logger.info("site %s: calibration of %s (%s), threshold %g on the calibrated scale (raw %.3f)", site,
                    calibration.created_at, calibration.method, threshold, calibration.raw_threshold)
    logger.info("scoring with model %s (%dx%d input)", model_ref.version, model_ref.image_size, model_ref.image_size)

    plan = plan_ingest(source, store, run_id, layout, model_ref.image_size, chunk_cells, s3_endpoint_url,
                       run_id_suffix=f"-{model_ref.version[-8:]}")
    paths = plan.paths
    settings = {"model_version": model_ref.version, "threshold": threshold, "blast_cutoff": blast_cutoff,
                "min_cells": min_cells, "precision": precision, "explain": explain, "explain_top_k": explain_top_k}
    if calibration is not None:
        settings |= {"site": site, "calibration": {"created_at": calibration.created_at, "method": calibration.method,
                                                   "coefficients": calibration.coefficients}}
    score_record = storage.join(paths.root, "score.json")
    if plan.complete:
        if storage.exists(score_record, store_options) and storage.read_json(score_record, store_options) == settings:
            logger.info("run %s is already scored with these settings: nothing to do", paths.run_id)
            patients = storage.read_table(paths.patients_table, store_options)
            return (_result(paths, model_ref.version, plan.recorded_counts(), patients, already_complete=True)
                    | {"site": site})
        # The tables are about to change: the run must stop looking complete first.
        storage.remove(paths.success, store_options)

    n_inputs = len(plan.found.inputs)
    shards = start_ingest(plan, chunks_per_task)
    storage.create_probabilities_array(paths.cells_zarr, n_inputs, chunk_cells, store_options)
    # Each shard's scoring waits only for its own decoding (the decoding task's result is its
    # input) and ranks with it, ahead of later shards: a worker scores a decoded shard before it
    # decodes another, while the other workers decode, so decoding overlaps inference. (With
    # fewer shards than about twice the worker threads, Dask hands every decoding task out at
    # once and a worker may decode its next shard first.) Shards an interrupted run finished
    # return from their markers at once.
    decoding, scoring = [], []
    for spec in shards:
        with in_order(spec["shard"]):
            decoding.append(submit_ingest_shard(plan, spec))
            scoring.append(score_shard.submit(spec["start"], spec["start"] + len(spec["uris"]), decoding[-1],
                                              paths.cells_zarr, paths.shard_marker("score", spec["shard"]),
                                              model_ref, plan.fingerprint, batch_size, precision, store_options))
    counts = finish_ingest(plan, collect_ingest(plan, decoding), mark_success=False)
    scored = 0
    for percent, shard_scored in results_with_progress(scoring, "score-progress", f"scoring {paths.run_id}"):
        scored += shard_scored
        logger.info("scoring %5.1f%%: %d cells of %d inputs", percent, scored, n_inputs)

    patients = write_scored_tables(paths, config, model_ref.version, store_options, calibration)
    storage.write_json(score_record, settings, store_options)
    # A run is complete only with its reports: they come before _SUCCESS.
    clear_explanations(paths, store_options)
    explained = patients_to_explain(patients) if explain else []
    for future in [explain_patient.submit(paths, patient_id, model_ref, explain_top_k, store_options)
                   for patient_id in explained]:
        future.result()
    index = write_reports(paths, store_options)
    logger.info("Grad-CAM of the top %d cells of %d patients; reports: %s", explain_top_k, len(explained), index)
    storage.write_bytes(paths.success, b"", store_options)
    create_table_artifact(key="patient-calls", table=patients.astype(object).where(patients.notna(), None)
                          .to_dict(orient="records"), description=f"per-patient AML calls, run {paths.run_id}")
    create_markdown_artifact(key="cohort-overview", markdown=_overview(patients, paths.run_id, model_ref.version, config),
                             description=f"cohort overview, run {paths.run_id}")
    create_markdown_artifact(key="patient-reports", markdown=reports_markdown(paths, patients),
                             description=f"per-patient HTML reports, run {paths.run_id}")
    rates = cell_type_rates(storage.read_table(paths.cells_table, store_options), threshold)
    if len(rates):
        create_table_artifact(key="per-type-rates", table=rates.astype(object).where(rates.notna(), None)
                              .to_dict(orient="records"),
                              description=f"blast-like rate per cell type, run {paths.run_id}")
    return _result(paths, model_ref.version, counts, patients, already_complete=False) | {"site": site}


def _result(paths, model_version, counts: dict, patients, already_complete: bool) -> dict:
    return {
        "run_id": paths.run_id, "run": paths.root, "model_version": model_version,
        "cells": counts["cells"], "quarantined": counts["quarantined"], "already_complete": already_complete,
        "report": index_url(paths),
        "patients": patients[["patient_id", "n_scored", "n_blast_like", "blast_fraction", "ci_low", "ci_high",
                              "call"]].to_dict(orient="records"),
    }
