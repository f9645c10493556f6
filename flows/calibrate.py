"""The ``calibrate-site`` flow: ingest a site's labelled cells, score them, fit and record its calibration."""

from __future__ import annotations

import numpy as np
from prefect import flow, get_run_logger

from aml_model.calibration import check_counts, fit_site_calibration, validate_site_name
from aml_model.config import SummaryConfig
from flows.ingest import CHUNKS_PER_TASK, ensure_ingested, plan_source
from flows.parameters import Layout, Probability, SiteName, require_existing
from tasks.calibration import publish_site_calibration, save_site_calibration, score_labelled_cells
from tasks.devices import model_tasks
from tasks.registry import ModelRef, resolve_model
from tasks.store import Store
from tasks.training import load_training_set

__all__ = ["calibrate_site"]

CELLS_PER_TASK = 256


def _registered_model(model: str, store: Store) -> ModelRef:
    """The registered model to calibrate (a bare .keras file has no place for a calibration)."""
    model_ref = resolve_model(model, store)
    if model_ref.version.startswith("file-"):
        message = (
            f"model {model!r} is a bare .keras file: calibrate the champion or a version registered in "
            f"{store.url} (the calibration is stored next to the registered model)"
        )
        raise ValueError(message)
    return model_ref


@flow(name="calibrate-site", validate_parameters=True)
def calibrate_site(
    source: str,
    store: str,
    site: SiteName,
    model: str = "champion",
    layout: Layout = "auto",
    blast_cutoff: Probability = SummaryConfig.blast_cutoff,
    s3_endpoint_url: str | None = None,
) -> dict:
    """Calibrate a registered model to one site on the site's labelled cells.

    Every parameter is checked (its type, the source, the model) before anything is written.

    Args:
        source: the site's labelled cells (patient layout with labels.csv, class layout, or a
            manifest with a label column; any fsspec URL). Cells without a label are not used.
        store: run store and model registry.
        site: the site's name: letters, digits, ``-``, ``_``.
        model: "champion" or a registered version (a bare .keras file is refused: the
            calibration is stored next to a registered model).
        layout, s3_endpoint_url: as for ``ingest``.
        blast_cutoff: the blast fraction at which the site's ``fraction`` operating point makes
            the expected blast-like fraction unbiased (the cut-off ``score`` calls at).

    Returns:
        site, model_version, the calibration's URL, the ingest run id, n_blast, n_other,
        coefficients, threshold, raw_threshold, the before/after metrics (dicts), blast_cutoff,
        and operating_points (name -> threshold, raw_threshold, sensitivity, false_positive_rate,
        bias_at_cutoff, metrics) as the site's file holds them.
    """
    logger = get_run_logger()
    validate_site_name(site)
    # The parameters' types were checked before this line; now that the source exists.
    location, store_at = Store.at(source, s3_endpoint_url), Store.at(store, s3_endpoint_url)
    require_existing([location], "source")
    model_ref = _registered_model(model, store_at)
    # The ingest steps on this flow's task runner (Dask), at the model's input size.
    plan = plan_source(location, store_at, layout, model_ref.image_size)
    ensure_ingested(plan, CHUNKS_PER_TASK)
    data = load_training_set([plan.paths])
    n_blast = int(data.y.sum())
    logger.info(
        "site %s: %d labelled cells (%d blast); %d without a label are not used; %d duplicate images dropped",
        site,
        len(data.cells),
        n_blast,
        data.n_unlabelled,
        data.n_duplicates,
    )
    check_counts(site, n_blast, len(data.cells) - n_blast)

    with model_tasks():
        futures = [
            score_labelled_cells.submit(
                data.cells.iloc[start : start + CELLS_PER_TASK], model_ref, store_at
            )
            for start in range(0, len(data.cells), CELLS_PER_TASK)
        ]
    probabilities = np.concatenate([future.result() for future in futures])
    calibration = fit_site_calibration(
        data.y,
        probabilities,
        site,
        model_ref.version,
        source=source,
        run_id=plan.paths.run_id,
        blast_cutoff=blast_cutoff,
    )
    url = save_site_calibration(calibration, store_at)
    before, after = calibration.before, calibration.after
    logger.info(
        "site %s, model %s: slope %.3f, intercept %.3f; sensitivity %.3f -> %.3f, specificity %.3f -> %.3f; %s",
        site,
        model_ref.version,
        calibration.slope,
        calibration.intercept,
        before.sensitivity,
        after.sensitivity,
        before.specificity,
        after.specificity,
        url,
    )
    stored = calibration.to_dict()
    for name, point in stored["operating_points"].items():
        logger.info(
            "site %s, %s operating point: threshold %.3f (raw %.3f), sensitivity %.3f, false-positive rate "
            "%.3f; expected bias of the blast-like fraction at %.0f%% blasts %+.3f",
            site,
            name,
            point["threshold"],
            point["raw_threshold"],
            point["sensitivity"],
            point["false_positive_rate"],
            100 * blast_cutoff,
            point["bias_at_cutoff"],
        )
    publish_site_calibration(calibration, url)
    return {
        "site": site,
        "model_version": model_ref.version,
        "calibration": url,
        "run_id": plan.paths.run_id,
        "n_blast": calibration.n_blast,
        "n_other": calibration.n_other,
        "coefficients": dict(calibration.coefficients),
        "threshold": calibration.threshold,
        "raw_threshold": calibration.raw_threshold,
        "before": before.to_dict(),
        "after": after.to_dict(),
        "blast_cutoff": blast_cutoff,
        "operating_points": stored["operating_points"],
    }
