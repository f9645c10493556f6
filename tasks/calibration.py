"""Site calibrations in the model registry: ``models/<version>/sites/<site>.json``, and scoring labelled cells."""

from __future__ import annotations

import numpy as np
import pandas as pd
from prefect.artifacts import create_markdown_artifact

from aml_model.calibration import (
    DEFAULT_OPERATING_POINT,
    OPERATING_POINTS,
    SiteCalibration,
    validate_site_name,
)
from aml_model.config import ScoringConfig
from aml_model.errors import AmlSmearError
from tasks.predict import worker_scorer
from tasks.registry import CARD_FILE, ModelNotFoundError, ModelRef, models_root
from tasks.retry import store_task
from tasks.store import Store, join
from tasks.training import load_cells

__all__ = [
    "CalibrationNotFoundError",
    "calibrated_versions",
    "calibration_markdown",
    "list_sites",
    "publish_site_calibration",
    "read_site_calibration",
    "save_site_calibration",
    "score_labelled_cells",
    "site_calibration_url",
]

SITES = "sites"


class CalibrationNotFoundError(AmlSmearError, FileNotFoundError):
    """The site has no calibration for the model version asked for."""


def site_calibration_url(store: Store, version: str, site: str) -> str:
    """``models/<version>/sites/<site>.json``; the site name is validated first."""
    return join(models_root(store), version, SITES, f"{validate_site_name(site)}.json")


def save_site_calibration(calibration: SiteCalibration, store: Store) -> str:
    """Write the calibration next to its (registered) model, in one atomic write; returns its URL.

    A recalibration of the same site and version replaces the earlier one.

    Raises:
        ModelNotFoundError: the model version is not completely registered in ``store``.
    """
    card = join(models_root(store), calibration.model_version, CARD_FILE)
    if not store.exists(card):
        message = (
            f"model version {calibration.model_version} is not registered in {models_root(store)} (no "
            f"{CARD_FILE}): calibrate the champion or a registered version, not a bare .keras file"
        )
        raise ModelNotFoundError(message)
    url = site_calibration_url(store, calibration.model_version, calibration.site)
    return store.write_json(url, calibration.to_dict())


def list_sites(store: Store, version: str) -> list[str]:
    """The sites calibrated for ``version``, sorted."""
    folder = join(models_root(store), version, SITES)
    return [
        name[: -len(".json")]
        for name in store.list_names(folder)
        if name.endswith(".json") and not name.startswith(".")
    ]


def calibrated_versions(store: Store, site: str) -> list[str]:
    """The registered versions that hold a calibration of ``site``, sorted (oldest first)."""
    validate_site_name(site)
    return [
        version
        for version in store.list_names(models_root(store))
        if store.exists(site_calibration_url(store, version, site))
    ]


def read_site_calibration(store: Store, site: str, version: str) -> SiteCalibration:
    """The calibration of ``site`` for model ``version``.

    Raises:
        ConfigError: an invalid site name.
        CalibrationNotFoundError: none for this version; the message names the versions the
            site was calibrated for and the command that calibrates the current one.
    """
    url = site_calibration_url(store, version, site)
    if not store.exists(url):
        others = calibrated_versions(store, site)
        where = (
            f"it was calibrated for model {', '.join(others)}"
            if others
            else f"it has no calibration in {store.url}"
        )
        message = (
            f"site {site} has no calibration for model {version} ({where}); run `aml-smear calibrate "
            f"LABELLED_SOURCE --store {store.url} --site {site}` again to calibrate model {version}"
        )
        raise CalibrationNotFoundError(message)
    calibration = SiteCalibration.from_dict(store.read_json(url))
    if calibration.model_version != version or calibration.site != site:
        message = (
            f"{url} holds the calibration of site {calibration.site} for model {calibration.model_version}, "
            f"not of site {site} for model {version}: run `aml-smear calibrate` again"
        )
        raise CalibrationNotFoundError(message)
    return calibration


@store_task("score-labelled-cells")
def score_labelled_cells(
    cells: pd.DataFrame, model: ModelRef, store: Store, batch_size: int = ScoringConfig.batch_size
) -> np.ndarray:
    """Raw probabilities of the given cells (cells_zarr, zarr_index), scored on a worker as ``score-smears`` does.

    Returns:
        `(len(cells),)` float32 blast probabilities, in the frame's order (float32 precision,
        the folded inference form the scoring workers use).
    """
    images = load_cells(cells, store)
    if not len(images):
        return np.zeros(0, np.float32)
    return worker_scorer(model, store, "float32", batch_size)(images)


def calibration_markdown(calibration: SiteCalibration, url: str) -> str:
    """The ``site-calibration`` artifact of a fit: the figures before and after, and the operating points
    with the expected bias of the blast-like fraction at the blast cut-off."""
    before, after = calibration.before, calibration.after
    lines = [
        f"# Site calibration: {calibration.site}",
        "",
        f"Model `{calibration.model_version}`, {calibration.method}: calibrated = sigmoid("
        f"{calibration.slope:.3f} x logit(p) + {calibration.intercept:.3f}); balanced threshold "
        f"{calibration.threshold:g} on the calibrated scale (raw probability {calibration.raw_threshold:.3f}).",
        "",
        f"Fitted on {calibration.n_blast} blast and {calibration.n_other} other labelled cells "
        "(the figures below are on those same cells).",
        "",
        "| | accuracy | sensitivity | specificity | ROC AUC | threshold |",
        "|---|---|---|---|---|---|",
    ]
    fraction = calibration.operating_point("fraction")
    for name, m in (
        ("before (raw)", before),
        ("after (calibrated)", after),
        ("after (fraction point)", fraction.metrics),
    ):
        lines.append(
            f"| {name} | {m.accuracy:.3f} | {m.sensitivity:.3f} | {m.specificity:.3f} | {m.roc_auc:.3f} | "
            f"{m.threshold:g} |"
        )
    cutoff = calibration.blast_cutoff
    lines += [
        "",
        f"## Operating points: the blast-like fraction of a patient with {cutoff:.0%} blasts",
        "",
        "A patient whose true blast fraction is f shows f x sensitivity + (1 - f) x false-positive rate "
        "blast-like cells in expectation. The rates are smoothed estimates from the labelled cells "
        f"(`aml_model.calibration`); `score --site` calls at the `{DEFAULT_OPERATING_POINT}` point unless "
        "`--site-operating-point` names the other.",
        "",
        "| operating point | threshold | raw threshold | sensitivity | false-positive rate | "
        f"expected fraction at {cutoff:.0%} | bias |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in OPERATING_POINTS:
        point = calibration.operating_point(name)
        # + 0.0 turns the -0.0 of a bias of -1e-15 (the fraction point's, by construction) into 0.
        lines.append(
            f"| {name} | {point.threshold:.3f} | {calibration.to_raw(point.threshold):.3f} | "
            f"{point.sensitivity:.3f} | {point.false_positive_rate:.3f} | "
            f"{point.expected_fraction(cutoff):.1%} | {round(point.bias(cutoff), 3) + 0.0:+.3f} |"
        )
    lines += ["", f"Stored at `{url}`."]
    return "\n".join(lines)


def publish_site_calibration(calibration: SiteCalibration, url: str) -> None:
    """The ``site-calibration`` artifact of the flow run (the calibration is stored at ``url``)."""
    create_markdown_artifact(
        key="site-calibration",
        markdown=calibration_markdown(calibration, url),
        description=f"calibration of site {calibration.site} for model {calibration.model_version}",
    )
