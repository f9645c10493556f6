"""The ``score-smears`` flow: ingest (once) -> inference on Dask workers -> cell table -> patient calls.

Each scoring is its own record, ``runs/<run_id>/scores/<score_id>/``, beside the ingest run's cells:
another model or other call settings add a scoring and never rewrite one (docs/design.md).
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from aml_model.aggregate import CORRECTED_COLUMNS
from aml_model.calibration import OperatingPoint, SiteCalibration
from aml_model.config import SummaryConfig
from aml_model.report import patients_to_explain
from flows.ingest import (
    IngestPlan,
    discard_listing,
    discover_source,
    finish_ingest,
    ingest_progress,
    plan_ingest,
    start_ingest,
    submit_ingest_shard,
)
from flows.logs import failing_with_reason
from flows.parameters import ScoreOptions, require_existing
from flows.progress import Progress, results_with_progress, windowed_results
from flows.runner import in_order, shards_in_flight
from tasks.arrivals import record_scored
from tasks.calibration import read_site_calibration
from tasks.devices import cluster_has_gpus, model_tasks
from tasks.explain import explain_patient, reuse_explanation
from tasks.ingest import plan_shards, shard_stop
from tasks.listing import Listing
from tasks.predict import reuse_probabilities, score_shard
from tasks.privacy import prefect_patient_ids
from tasks.registry import ModelRef, resolve_model
from tasks.report import index_url, write_reports
from tasks.runs import (
    REUSED_FROM,
    derive_score_id,
    mark_complete,
    open_scoring,
    recording_failure,
    reusable_probabilities,
)
from tasks.score_report import publish_scoring
from tasks.store import Store
from tasks.store_layout import ScoringPaths
from tasks.summarise import write_scored_tables

__all__ = ["score_smears"]


@flow(name="score-smears", validate_parameters=True)
def score_smears(
    source: str,
    store: str,
    options: ScoreOptions = ScoreOptions(),
    new_only: bool = False,
    s3_endpoint_url: str | None = None,
) -> dict:
    """Score every cell of ``source`` (or only its new patients) and call each patient.

    Every parameter is checked (its type, then that the source exists) before anything is written
    (:mod:`flows.parameters`). The cells are decoded once per input list (the ingest run); each
    model and settings make a scoring of their own, and a finished scoring is never rewritten. A
    scoring with the model and precision of a finished scoring of the same run copies that
    scoring's probabilities (and the Grad-CAM it can) instead of running the model again.

    Args:
        source: folder or manifest of cell images (any fsspec URL).
        store: run store URL; the model registry is its ``models/``.
        options: the model, scoring settings and call rule (:class:`flows.parameters.ScoreOptions`).
        new_only: score only the patients whose current image set this model has not scored
            (:mod:`tasks.arrivals`); they make one new run. With nothing new, nothing is written.
        s3_endpoint_url: S3-compatible endpoint for s3:// URLs.

    Returns:
        run_id, score_id, the scoring's folder (run), the ingest run's folder, model version, counts,
        the per-patient calls (with the corrected fraction when scored with a site), the reports'
        index page, whether nothing was new, the call settings (threshold, blast cut-off, minimum
        cells, site and operating point) and the scoring whose probabilities were reused (or None).
        A failure fails the run with its one-line reason as the state's message
        (:func:`flows.logs.failing_with_reason`); called directly, the flow raises it.
    """
    return failing_with_reason(
        _score_smears,
        Store.at(source, s3_endpoint_url),
        Store.at(store, s3_endpoint_url),
        options,
        new_only,
    )


def _score_smears(source: Store, store: Store, options: ScoreOptions, new_only: bool) -> dict:
    """score_smears' body."""
    logger = get_run_logger()
    require_existing([source], "source")  # the types were checked before this line
    model_ref = resolve_model(options.model, store)
    calibration, point = _site_calibration(options, store, model_ref)
    logger.info(
        "scoring with model %s (%dx%d input)",
        model_ref.version,
        model_ref.image_size,
        model_ref.image_size,
    )
    found = discover_source(
        source,
        options.layout,
        store,
        model_ref.image_size,
        options.chunk_cells,
        options.chunks_per_task,
        new_for=model_ref.version if new_only else None,
    )
    try:
        return _score_listed(source, store, options, new_only, model_ref, calibration, point, found)
    finally:
        discard_listing(store, found)


def _score_listed(
    source: Store,
    store: Store,
    options: ScoreOptions,
    new_only: bool,
    model_ref: ModelRef,
    calibration: SiteCalibration | None,
    point: OperatingPoint | None,
    found: Listing,
) -> dict:
    """score_smears' body once the source is listed."""
    logger = get_run_logger()
    config = options.summary_config(None if point is None else point.threshold)
    versions = found.versions
    if new_only:
        if not versions:
            logger.info(
                "nothing new in %s: model %s has scored every patient's current images",
                source.url,
                model_ref.version,
            )
            return _nothing_new(model_ref.version, config, options)
        logger.info(
            "%d new or changed patients: %s",
            len(versions),
            ", ".join(sorted(prefect_patient_ids(versions))),
        )
    plan = plan_ingest(source, found, store, options.run_id)
    settings = _settings(model_ref.version, config, options, calibration)
    scoring = plan.paths.scoring(options.score_id or derive_score_id(settings))
    reused = reusable_probabilities(scoring, settings) if plan.complete else None
    if open_scoring(scoring, settings, reused_from=reused and reused.score_id):
        logger.info(
            "scoring %s of run %s is complete with these settings: nothing to do",
            scoring.score_id,
            plan.paths.run_id,
        )
        patients = store.read_table(scoring.patients_table)
        record_scored(scoring, model_ref.version, patients)
        recorded = store.read_json(scoring.settings).get(REUSED_FROM)
        return _result(
            scoring,
            model_ref.version,
            plan.recorded_counts(),
            patients,
            True,
            config,
            options,
            recorded,
        )
    # The ingest run is written here too when it is new: a failure is recorded in both.
    with recording_failure([scoring] if plan.complete else [plan.paths, scoring]):
        if reused is None:
            counts = _score_cells(plan, scoring, model_ref, options)
        else:
            scored = reuse_probabilities(reused, scoring)
            logger.info(
                "probabilities of %d cells reused from scoring %s (the same model, precision and cells): "
                "no cell scored again",
                scored,
                reused.score_id,
            )
            counts = plan.recorded_counts()
        patients = write_scored_tables(
            scoring, config, model_ref.version, calibration, versions, point
        )
        index = _explain_and_report(scoring, patients, model_ref, options, reused)
        mark_complete(scoring)
    record_scored(scoring, model_ref.version, patients)
    artifacts = publish_scoring(scoring, patients, model_ref.version, config)
    # The run's last line, so that `prefect deployment run --watch` ends with where the results are.
    logger.info(
        "scoring %s of run %s complete; reports: %s; per-patient calls: %s; report index: %s",
        scoring.score_id,
        scoring.run_id,
        index,
        artifacts["patient-calls"],
        artifacts["report-index"],
    )
    return _result(
        scoring,
        model_ref.version,
        counts,
        patients,
        False,
        config,
        options,
        reused and reused.score_id,
    )


def _site_calibration(
    options: ScoreOptions, store: Store, model_ref: ModelRef
) -> tuple[SiteCalibration, OperatingPoint] | tuple[None, None]:
    """The site's calibration of the model and its chosen operating point, checked before anything
    is written; (None, None) without a site."""
    if options.site is None:
        return None, None
    if options.threshold != ScoreOptions.model_fields["threshold"].default:
        message = (
            f"threshold={options.threshold:g} and site={options.site!r} both given: the site's calibration "
            f"sets the threshold"
        )
        raise ValueError(message)
    calibration = read_site_calibration(store, options.site, model_ref.version)
    point = calibration.operating_point(options.site_operating_point, options.blast_cutoff)
    get_run_logger().info(
        "site %s: calibration of %s (%s), %s operating point: threshold %g on the calibrated "
        "scale (raw %.3f); expected blast-like fraction at %.0f%% blasts %.1f%%",
        options.site,
        calibration.created_at,
        calibration.method,
        options.site_operating_point,
        point.threshold,
        calibration.to_raw(point.threshold),
        100 * options.blast_cutoff,
        100 * point.expected_fraction(options.blast_cutoff),
    )
    return calibration, point


def _settings(
    model_version: str, config: SummaryConfig, options: ScoreOptions, calibration
) -> dict:
    """What a scoring's results depend on (besides the cells): its score.json."""
    settings = {
        "model_version": model_version,
        "threshold": config.threshold,
        "blast_cutoff": config.blast_cutoff,
        "min_cells": config.min_cells,
        "max_quarantined_share": config.max_quarantined_share,
        "precision": options.precision,
        "explain": options.explain,
        "explain_top_k": options.explain_top_k,
    }
    if calibration is not None:
        settings |= {
            "site": options.site,
            "site_operating_point": options.site_operating_point,
            "calibration": {
                "created_at": calibration.created_at,
                "method": calibration.method,
                "coefficients": calibration.coefficients,
            },
        }
    return settings


#: Where a shard's decoding is among the futures :func:`_score_cells` submits for it.
_DECODING = 1


def _score_cells(
    plan: IngestPlan, scoring: ScoringPaths, model_ref: ModelRef, options: ScoreOptions
) -> dict[str, int]:
    """Score every decoded cell into the scoring's probabilities, decoding first where the run is new.

    Each shard's scoring waits only for its own decoding (the decoding task's result is its
    input) and ranks with it, ahead of later shards: a worker scores a decoded shard before it
    decodes another, while the other workers decode, so decoding overlaps inference. (With fewer
    shards in flight than about twice the worker threads, Dask hands every decoding task out at once
    and a worker may decode its next shard first.) A finished ingest run is not decoded again: its
    accepted cells are scored from its Zarr images, each shard reading which they are from the
    parts of its cell table that overlap its slots. Shards an interrupted scoring finished
    return from their markers at once. Shards are submitted a window at a time
    (:func:`flows.progress.windowed_results`), and the ingest's tables are written as soon as its
    last shard is decoded, while the last shards score. A failed scoring shard is raised once every
    shard is decoded and the ingest complete, so that other scorings reuse its cells; a failed
    decoding is raised at once.

    Returns:
        The ingest run's cell and quarantine counts.
    """
    store = plan.paths.store
    n_inputs = plan.found.n_inputs
    store.create_probabilities_array(scoring.probabilities_zarr, n_inputs, plan.chunk_cells)
    if plan.complete:
        shards = plan_shards(
            n_inputs, plan.found.inputs_url, plan.chunk_cells, options.chunks_per_task
        )
    else:
        shards = start_ingest(plan, options.chunks_per_task)
    gpus = cluster_has_gpus()

    def submit(spec: dict) -> list:
        """The shard's scoring and, where the run is new, its decoding, which the scoring waits for."""
        with in_order(spec["shard"]):
            decoding = None if plan.complete else submit_ingest_shard(plan, spec)
            with model_tasks(gpus):
                scoring_task = score_shard.submit(
                    spec["start"],
                    shard_stop(spec),
                    decoding,
                    plan.paths.cells_table,
                    plan.paths.cells_zarr,
                    scoring.probabilities_zarr,
                    scoring.shard_marker("score", spec["shard"]),
                    model_ref,
                    plan.fingerprint,
                    options.batch_size,
                    options.precision,
                    store,
                )
        return [scoring_task] if decoding is None else [scoring_task, decoding]

    receipts: list[dict] = []
    decoded = None if plan.complete else ingest_progress(plan, len(shards), receipts)
    counts = plan.recorded_counts() if plan.complete else None
    scored = 0

    def line(percent: float, _done: int) -> str:
        return f"scoring {percent:5.1f}%: {scored} cells of {n_inputs} inputs"

    progress = Progress(
        len(shards), "score-progress", f"scoring {scoring.run_id}/{scoring.score_id}", line
    )
    failed: Exception | None = None
    for _spec, position, future in windowed_results(shards, submit, shards_in_flight):
        if position == _DECODING:
            receipts.append(future.result())
            decoded.advance()
            if len(receipts) == len(shards):
                counts = finish_ingest(plan, receipts, mark_success=True)
            continue
        try:
            scored += future.result()
        except Exception as error:  # the decoding goes on: the ingest completes first
            failed = failed or error
            continue
        progress.advance()
    if failed is not None:
        raise failed
    return counts if counts is not None else finish_ingest(plan, receipts, mark_success=True)


def _explain_and_report(
    scoring: ScoringPaths,
    patients,
    model_ref: ModelRef,
    options: ScoreOptions,
    reused: ScoringPaths | None = None,
) -> str:
    """Grad-CAM on the workers for the patients worth a look, then the HTML reports; returns the index URL.

    With ``reused``, the scoring whose probabilities this one copied, a patient's Grad-CAM made
    there with the same top-k is copied too; only the others are computed.
    """
    explained = patients_to_explain(patients) if options.explain else []
    copied = {
        patient_id
        for patient_id in explained
        if reused is not None
        and reuse_explanation(reused, scoring, patient_id, model_ref.version, options.explain_top_k)
    }
    with model_tasks():
        futures = [
            explain_patient.submit(scoring, patient_id, model_ref, options.explain_top_k)
            for patient_id in explained
            if patient_id not in copied
        ]
    if futures:

        def line(percent: float, done: int) -> str:
            return f"Grad-CAM {percent:5.1f}%: {done}/{len(futures)} patients"

        for _ in results_with_progress(
            futures, "explain-progress", f"Grad-CAM of scoring {scoring.score_id}", line
        ):
            pass
    copies = "" if reused is None else f" ({len(copied)} copied from scoring {reused.score_id})"
    get_run_logger().info(
        "Grad-CAM of the top %d cells of %d patients%s",
        options.explain_top_k,
        len(explained),
        copies,
    )
    return write_reports(scoring)


_PATIENT_COLUMNS = [
    "patient_id",
    "n_scored",
    "n_blast_like",
    "blast_fraction",
    "ci_low",
    "ci_high",
    "call",
]


def _call_fields(config: SummaryConfig, options: ScoreOptions) -> dict:
    """The settings that make the calls, so that a summary tells two scorings of a run apart."""
    point = None if options.site is None else options.site_operating_point
    return {
        "threshold": config.threshold,
        "blast_cutoff": config.blast_cutoff,
        "min_cells": config.min_cells,
        "site": options.site,
        "site_operating_point": point,
    }


def _result(
    scoring: ScoringPaths,
    model_version: str,
    counts: dict,
    patients,
    already_complete: bool,
    config: SummaryConfig,
    options: ScoreOptions,
    reused_from: str | None,
) -> dict:
    columns = _PATIENT_COLUMNS + [column for column in CORRECTED_COLUMNS if column in patients]
    return {
        "run_id": scoring.run_id,
        "score_id": scoring.score_id,
        "run": scoring.root,
        "ingest": scoring.ingest.root,
        "model_version": model_version,
        "cells": counts["cells"],
        "quarantined": counts["quarantined"],
        "already_complete": already_complete,
        "nothing_new": False,
        "report": index_url(scoring),
        "patients": patients[columns].to_dict(orient="records"),
        **_call_fields(config, options),
        REUSED_FROM: reused_from,
    }


def _nothing_new(model_version: str, config: SummaryConfig, options: ScoreOptions) -> dict:
    return {
        "run_id": None,
        "score_id": None,
        "run": None,
        "ingest": None,
        "model_version": model_version,
        "cells": 0,
        "quarantined": 0,
        "already_complete": True,
        "nothing_new": True,
        "report": None,
        "patients": [],
        **_call_fields(config, options),
        REUSED_FROM: None,
    }
