"""The ``score-smears`` flow: ingest (once) -> inference on Dask workers -> cell table -> patient calls.

Each scoring is its own record, ``runs/<run_id>/scores/<score_id>/``, beside the ingest run's cells:
another model or other call settings add a scoring and never rewrite one (docs/design.md).
"""

from __future__ import annotations

import numpy as np
from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from aml_model.aggregate import RESEARCH_NOTE
from aml_model.config import SummaryConfig
from aml_model.report import cell_type_rates, patients_to_explain
from flows.ingest import (CHUNK_CELLS, CHUNKS_PER_TASK, IngestPlan, collect_ingest, discover_source, finish_ingest,
                          plan_ingest, start_ingest, submit_ingest_shard)
from flows.parameters import Layout, Positive, Precision, Probability, RunId, SiteName, require_existing
from flows.progress import results_with_progress
from flows.runner import in_order
from tasks import storage
from tasks.devices import cluster_has_gpus, model_tasks
from tasks.arrivals import only_new, patient_versions, record_scored, scored_versions
from tasks.calibration import read_site_calibration
from tasks.events import emit_aml_suspected
from tasks.explain import explain_patient
from tasks.ingest import plan_shards
from tasks.links import index_link, reports_markdown
from tasks.predict import score_shard
from tasks.privacy import prefect_patient_ids, prefect_patients_table
from tasks.registry import ModelRef, resolve_model
from tasks.report import index_url, write_reports
from tasks.runs import derive_score_id, mark_complete, open_scoring
from tasks.summarise import write_scored_tables

__all__ = ["score_smears"]


def _overview(patients, scoring: storage.ScoringPaths, model_version: str, config: SummaryConfig) -> str:
    """The cohort-overview markdown; ``patients`` as Prefect may see it (:func:`prefect_patients_table`)."""
    counts = patients["call"].value_counts().to_dict()
    lines = [f"# AML smear scoring: run {scoring.run_id}, scoring {scoring.score_id}", "", f"**{RESEARCH_NOTE}**", "",
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
    score_id: RunId | None = None,
    new_only: bool = False,
    layout: Layout = "auto",
    batch_size: Positive = 64,
    threshold: Probability = 0.5,
    blast_cutoff: Probability = 0.2,
    min_cells: Positive = 100,
    precision: Precision = "auto",
    chunk_cells: Positive = CHUNK_CELLS,
    chunks_per_task: Positive = CHUNKS_PER_TASK,
    s3_endpoint_url: str | None = None,
    explain: bool = True,
    explain_top_k: Positive = 12,
    site: SiteName | None = None,
) -> dict:
    """Score every cell of ``source`` (or its new patients) and call each patient.

    Every parameter is checked (its type, then that the source exists) before anything is
    written, so a wrong value never touches a finished run (:mod:`flows.parameters`). The cells
    are decoded once per input list (the ingest run); each model and settings make a scoring of
    their own, and a finished scoring is never rewritten.

    Args:
        source: folder or manifest of cell images (any fsspec URL).
        store: run store URL; the model registry is its ``models/``.
        model: "champion", a registered version, or a .keras path/URL.
        run_id: the ingest run to score; by default the source name and a hash of its inputs,
            so the same inputs map to the same run whatever the model.
        score_id: the scoring to write; by default the model version and a hash of the
            settings below, so the same model and settings map to the same scoring.
        new_only: score only the patients whose current image set this model has not scored
            (:mod:`tasks.arrivals`); they make one new run. With nothing new, nothing is written.
        layout, chunk_cells, chunks_per_task, s3_endpoint_url: as for ``ingest``; each
            scoring task takes the chunks one decoding task wrote, as soon as they are written.
        batch_size: cells per forward pass on a worker.
        threshold, blast_cutoff, min_cells: the per-patient call rule (SummaryConfig).
        precision: "auto" (each worker picks: :func:`tasks.predict.worker_precision`), "float32",
            "bfloat16" (CPUs with AMX or AVX-512 BF16) or "float16" (GPUs).
        explain: Grad-CAM overlays of the most blast-like cells of each AML_SUSPECTED or
            INDETERMINATE patient, computed on the workers, shown in the reports.
        explain_top_k: cells per patient in the reports' galleries (and Grad-CAM).
        site: score with this site's calibration of the model (``aml-smear calibrate``): the
            calibrated probability (column probability_calibrated) and the site's threshold make
            the calls; refused before anything is written when the site has no calibration for
            this model version. ``threshold`` must then stay at its default.

    Returns:
        run_id, score_id, the scoring's folder (run), the ingest run's folder, model version,
        counts, the per-patient calls, the reports' index page, and whether nothing was new.
    """
    logger = get_run_logger()
    # The parameters' types were checked before this line; now that the source exists.
    require_existing([source], "source", s3_endpoint_url)
    store_options = storage.storage_options_for(store, s3_endpoint_url)
    model_ref = resolve_model(model, store, store_options)
    calibration = _site_calibration(site, threshold, store, model_ref, store_options)
    config = SummaryConfig(threshold=threshold if calibration is None else calibration.threshold,
                           blast_cutoff=blast_cutoff, min_cells=min_cells)
    logger.info("scoring with model %s (%dx%d input)", model_ref.version, model_ref.image_size, model_ref.image_size)

    found = discover_source(source, layout, s3_endpoint_url)
    versions = patient_versions(found)
    if new_only:
        found, versions = only_new(found, versions, scored_versions(store, model_ref.version, store_options))
        if not versions:
            logger.info("nothing new in %s: model %s has scored every patient's current images", source,
                        model_ref.version)
            return _nothing_new(model_ref.version, site)
        logger.info("%d new or changed patients: %s", len(versions), ", ".join(sorted(prefect_patient_ids(versions))))
    plan = plan_ingest(found, store, run_id, model_ref.image_size, chunk_cells, s3_endpoint_url)
    settings = _settings(model_ref.version, config, precision, explain, explain_top_k, site, calibration)
    scoring = plan.paths.scoring(score_id or derive_score_id(settings))
    if open_scoring(scoring, settings, store_options):
        logger.info("scoring %s of run %s is complete with these settings: nothing to do", scoring.score_id,
                    plan.paths.run_id)
        patients = storage.read_table(scoring.patients_table, store_options)
        record_scored(scoring, model_ref.version, patients, store_options)
        return _result(scoring, model_ref.version, plan.recorded_counts(), patients, already_complete=True) | {
            "site": site}

    counts = _score_cells(plan, scoring, model_ref, batch_size, precision, chunks_per_task)
    patients = write_scored_tables(scoring, config, model_ref.version, store_options, calibration, versions)
    index = _explain_and_report(scoring, patients, model_ref, explain, explain_top_k, store_options)
    mark_complete(scoring, store_options)
    record_scored(scoring, model_ref.version, patients, store_options)
    _publish(scoring, patients, model_ref.version, config, store_options)
    logger.info("scoring %s of run %s complete; reports: %s", scoring.score_id, scoring.run_id, index)
    return _result(scoring, model_ref.version, counts, patients, already_complete=False) | {"site": site}


def _site_calibration(site: str | None, threshold: float, store: str, model_ref: ModelRef, store_options: dict):
    """The site's calibration of the model, checked before anything is written; None without a site."""
    if site is None:
        return None
    if threshold != 0.5:
        message = f"threshold={threshold:g} and site={site!r} both given: the site's calibration sets the threshold"
        raise ValueError(message)
    calibration = read_site_calibration(store, site, model_ref.version, store_options)
    get_run_logger().info("site %s: calibration of %s (%s), threshold %g on the calibrated scale (raw %.3f)", site,
                          calibration.created_at, calibration.method, calibration.threshold,
                          calibration.raw_threshold)
    return calibration


def _settings(model_version: str, config: SummaryConfig, precision: str, explain: bool, explain_top_k: int,
              site: str | None, calibration) -> dict:
    """What a scoring's results depend on (besides the cells): its score.json."""
    settings = {"model_version": model_version, "threshold": config.threshold, "blast_cutoff": config.blast_cutoff,
                "min_cells": config.min_cells, "precision": precision, "explain": explain,
                "explain_top_k": explain_top_k}
    if calibration is not None:
        settings |= {"site": site, "calibration": {"created_at": calibration.created_at, "method": calibration.method,
                                                   "coefficients": calibration.coefficients}}
    return settings


def _score_cells(plan: IngestPlan, scoring: storage.ScoringPaths, model_ref: ModelRef, batch_size: int,
                 precision: str, chunks_per_task: int) -> dict[str, int]:
    """Score every decoded cell into the scoring's probabilities, decoding first where the run is new.

    Each shard's scoring waits only for its own decoding (the decoding task's result is its
    input) and ranks with it, ahead of later shards: a worker scores a decoded shard before it
    decodes another, while the other workers decode, so decoding overlaps inference. (With fewer
    shards than about twice the worker threads, Dask hands every decoding task out at once and a
    worker may decode its next shard first.) A finished ingest run is not decoded again: its
    accepted cells are scored from its Zarr images. Shards an interrupted scoring finished
    return from their markers at once.

    Returns:
        The ingest run's cell and quarantine counts.
    """
    logger = get_run_logger()
    store_options = plan.store_options
    n_inputs = len(plan.found.inputs)
    storage.create_probabilities_array(scoring.probabilities_zarr, n_inputs, plan.chunk_cells, store_options)
    if plan.complete:
        shards = plan_shards(plan.found.inputs, plan.chunk_cells, chunks_per_task)
        accepted = np.sort(storage.read_table(plan.paths.cells_table, store_options)["zarr_index"].to_numpy())
        bounds = np.searchsorted(accepted, [[spec["start"], spec["start"] + len(spec["uris"])] for spec in shards])
        decoding = [[{"zarr_index": int(i), "reason": None} for i in accepted[low:high]] for low, high in bounds]
    else:
        shards, decoding = start_ingest(plan, chunks_per_task), []
    scoring_futures, gpus = [], cluster_has_gpus()
    for number, spec in enumerate(shards):
        with in_order(spec["shard"]):
            if not plan.complete:
                decoding.append(submit_ingest_shard(plan, spec))
            with model_tasks(gpus):
                scoring_futures.append(score_shard.submit(
                    spec["start"], spec["start"] + len(spec["uris"]), decoding[number], plan.paths.cells_zarr,
                    scoring.probabilities_zarr, scoring.shard_marker("score", spec["shard"]), model_ref,
                    plan.fingerprint, batch_size, precision, store_options))
    counts = (plan.recorded_counts() if plan.complete
              else finish_ingest(plan, collect_ingest(plan, decoding), mark_success=True))
    scored = 0
    for percent, shard_scored in results_with_progress(scoring_futures, "score-progress",
                                                       f"scoring {scoring.run_id}/{scoring.score_id}"):
        scored += shard_scored
        logger.info("scoring %5.1f%%: %d cells of %d inputs", percent, scored, n_inputs)
    return counts


def _explain_and_report(scoring: storage.ScoringPaths, patients, model_ref: ModelRef, explain: bool,
                        explain_top_k: int, store_options: dict) -> str:
    """Grad-CAM on the workers for the patients worth a look, then the HTML reports; returns the index URL."""
    explained = patients_to_explain(patients) if explain else []
    with model_tasks():
        futures = [explain_patient.submit(scoring, patient_id, model_ref, explain_top_k, store_options)
                   for patient_id in explained]
    for future in futures:
        future.result()
    get_run_logger().info("Grad-CAM of the top %d cells of %d patients", explain_top_k, len(explained))
    return write_reports(scoring, store_options)


def _publish(scoring: storage.ScoringPaths, patients, model_version: str, config: SummaryConfig,
             store_options: dict) -> None:
    """What a complete scoring sends to Prefect: its artifacts (patient calls, cohort overview, report
    links, per-type rates) and an event per AML_SUSPECTED patient, patient ids as :mod:`tasks.privacy` says."""
    where = f"run {scoring.run_id}, scoring {scoring.score_id}"
    shown = prefect_patients_table(patients)
    create_table_artifact(key="patient-calls", table=shown.astype(object).where(shown.notna(), None)
                          .to_dict(orient="records"), description=f"per-patient AML calls, {where}")
    create_markdown_artifact(key="cohort-overview", markdown=_overview(shown, scoring, model_version, config),
                             description=f"cohort overview, {where}")
    index = index_link(scoring, store_options)
    expiry = f"; {index.expiry_note}" if index.expiry_note else ""
    create_link_artifact(key="report-index", link=index.url, link_text=f"Cohort reports, {where}",
                         description=f"the cohort's HTML reports, {where}{expiry}")
    create_markdown_artifact(key="patient-reports", markdown=reports_markdown(scoring, patients, index, store_options),
                             description=f"per-patient HTML reports, {where}{expiry}")
    rates = cell_type_rates(storage.read_table(scoring.cells_table, store_options), config.threshold)
    if len(rates):
        create_table_artifact(key="per-type-rates", table=rates.astype(object).where(rates.notna(), None)
                              .to_dict(orient="records"), description=f"blast-like rate per cell type, {where}")
    emit_aml_suspected(scoring, patients, model_version, index.url)


_PATIENT_COLUMNS = ["patient_id", "n_scored", "n_blast_like", "blast_fraction", "ci_low", "ci_high", "call"]


def _result(scoring: storage.ScoringPaths, model_version: str, counts: dict, patients,
            already_complete: bool) -> dict:
    return {
        "run_id": scoring.run_id, "score_id": scoring.score_id, "run": scoring.root, "ingest": scoring.ingest.root,
        "model_version": model_version, "cells": counts["cells"], "quarantined": counts["quarantined"],
        "already_complete": already_complete, "nothing_new": False, "report": index_url(scoring),
        "patients": patients[_PATIENT_COLUMNS].to_dict(orient="records"),
    }


def _nothing_new(model_version: str, site: str | None) -> dict:
    return {"run_id": None, "score_id": None, "run": None, "ingest": None, "model_version": model_version,
            "cells": 0, "quarantined": 0, "already_complete": True, "nothing_new": True, "report": None,
            "patients": [], "site": site}
