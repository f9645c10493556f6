"""Per-site calibration of a model's blast probabilities (Platt scaling).

Labs differ (stain, scanner, smear technique), so a model's probabilities can sit systematically
too high or too low at a new site. A site calibrates the model on its own labelled cells: the
model scores them, and a logistic regression on the logit of those scores (Platt scaling) maps
each raw probability ``p`` to a calibrated one::

    calibrated = sigmoid(slope * logit(clip(p)) + intercept)

**Fit.** Platt's targets are used instead of 0/1 labels (blast: ``(n_blast + 1) / (n_blast + 2)``,
other: ``1 / (n_other + 2)``), which keeps the fit finite when the site's cells are perfectly
separated, and the two classes are weighted equally. Equal weights make the calibrated value the
blast probability at even prior odds: it does not depend on how many cells of each class the lab
happened to label (a labelled calibration set is curated, its class mix says nothing about a
smear's).

**Threshold.** The site keeps 0.5 on the calibrated scale. With equal class weights,
calibrated = 0.5 is where the fitted likelihood ratio of blast to other is 1, which is exactly
where Youden's J (sensitivity + specificity - 1) is largest under the fitted model. Picking the
empirical Youden point on the site's cells instead was rejected: with tens of cells per class it
jumps between neighbouring scores, sits on one training cell's score, and so overfits the
calibration set; the fitted (two-parameter) point is its smoothed estimate.

Nothing here knows about Prefect or storage; ``tasks/calibration.py`` stores the result next to
the model.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit, logit
from sklearn.linear_model import LogisticRegression

from aml_model.errors import CalibrationError, ConfigError
from aml_model.evaluate import BinaryMetrics, compute_metrics

__all__ = ["CALIBRATED_COLUMN", "DEFAULT_CLIP", "METHOD", "MIN_CELLS_PER_CLASS", "SiteCalibration", "call_probabilities",
           "check_counts", "fit_site_calibration", "validate_site_name"]

METHOD = "platt-balanced"
"""Platt scaling on logit(p) with Platt's smoothed targets and equal class weights."""
MIN_CELLS_PER_CLASS = 10
"""Fewest labelled cells of each class (blast, other) a calibration is fitted on."""
DEFAULT_CLIP = 1e-6
"""Raw probabilities are clipped to [clip, 1 - clip] before the logit (float32 scores reach 0 and 1)."""
CALIBRATED_THRESHOLD = 0.5
CALIBRATED_COLUMN = "probability_calibrated"
"""Column of a scored cell table holding the calibrated probability, when a site calibration was applied."""
FORMAT_VERSION = 1

_SITE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def validate_site_name(site: str) -> str:
    """Return ``site`` if it is 1-64 letters, digits, ``-`` or ``_``; raise ConfigError otherwise.

    Site names become file names (``models/<version>/sites/<site>.json``), so nothing else
    (no ``/``, ``.``, spaces) is allowed.
    """
    if not isinstance(site, str) or not _SITE_NAME.fullmatch(site):
        message = f"site name {site!r} is invalid: use 1-64 letters, digits, '-' or '_'"
        raise ConfigError(message)
    return site


def check_counts(site: str, n_blast: int, n_other: int, minimum: int = MIN_CELLS_PER_CLASS) -> None:
    """Refuse a calibration set with fewer than ``minimum`` labelled cells of either class.

    Raises:
        CalibrationError: naming the site, both counts and the minimum.
    """
    if n_blast < minimum or n_other < minimum:
        message = (f"site {site}: calibration needs at least {minimum} labelled cells of each class; found "
                   f"{n_blast} blast and {n_other} other cells. Label more cells of the missing class and run again")
        raise CalibrationError(message)


def call_probabilities(cells: pd.DataFrame) -> np.ndarray:
    """The probabilities a scored cell table's calls were made on, `(n,)` float64.

    The calibrated column where the run was scored with a site calibration (its threshold is on
    that scale), the raw ``probability`` otherwise.
    """
    column = CALIBRATED_COLUMN if CALIBRATED_COLUMN in cells else "probability"
    return cells[column].to_numpy(np.float64)


def _logits(probabilities: np.ndarray, clip: float) -> np.ndarray:
    return logit(np.clip(np.asarray(probabilities, np.float64), clip, 1.0 - clip))


@dataclass(frozen=True)
class SiteCalibration:
    """One site's calibration of one model version.

    Attributes:
        site: the site's name (letters, digits, ``-``, ``_``).
        model_version: the registered model version whose probabilities it calibrates.
        method: :data:`METHOD`.
        coefficients: ``{"slope": a, "intercept": b}``: calibrated = sigmoid(a * logit(p) + b),
            a > 0 (dimensionless, on the logit scale).
        clip: raw probabilities are clipped to [clip, 1 - clip] before the logit.
        threshold: a cell whose calibrated probability is >= threshold is blast-like at the site.
        n_blast, n_other: labelled cells of each class it was fitted on.
        before: metrics of the raw probabilities at 0.5 on those cells.
        after: metrics of the calibrated probabilities at ``threshold`` on the same cells (an
            in-sample figure: it shows what the calibration changes, not how well it generalises).
        created_at: ISO 8601 UTC time of the fit.
        source: where the labelled cells came from (URL), for the record.
        run_id: the store run that holds those cells.
    """

    site: str
    model_version: str
    method: str
    coefficients: dict[str, float]
    clip: float
    threshold: float
    n_blast: int
    n_other: int
    before: BinaryMetrics
    after: BinaryMetrics
    created_at: str
    source: str = ""
    run_id: str = ""

    def __post_init__(self) -> None:
        validate_site_name(self.site)
        if self.method != METHOD:
            message = f"calibration method {self.method!r} is not supported (expected {METHOD!r})"
            raise ConfigError(message)
        if set(self.coefficients) != {"slope", "intercept"}:
            message = f"calibration coefficients must be slope and intercept, got {sorted(self.coefficients)}"
            raise ConfigError(message)
        if not self.coefficients["slope"] > 0:
            message = f"calibration slope must be > 0, got {self.coefficients.get('slope')!r}"
            raise ConfigError(message)
        if not 0 < self.threshold < 1:
            message = f"calibration threshold must be in (0, 1), got {self.threshold!r}"
            raise ConfigError(message)

    @property
    def slope(self) -> float:
        return float(self.coefficients["slope"])

    @property
    def intercept(self) -> float:
        return float(self.coefficients["intercept"])

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """Calibrated probabilities.

        Args:
            probabilities: `(n,)` raw blast probabilities of this model version, in [0, 1]
                (NaN stays NaN).

        Returns:
            `(n,)` float64 calibrated probabilities in (0, 1), increasing in the raw ones.
        """
        raw = np.asarray(probabilities, np.float64)
        return expit(self.slope * _logits(raw, self.clip) + self.intercept)

    @property
    def raw_threshold(self) -> float:
        """The raw probability whose calibrated value is ``threshold``: the site's cut on the model's scale."""
        return float(expit((logit(self.threshold) - self.intercept) / self.slope))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary; :meth:`from_dict` reads it back."""
        out = dataclasses.asdict(self)
        out["before"], out["after"] = self.before.to_dict(), self.after.to_dict()
        out["raw_threshold"] = self.raw_threshold
        out["format_version"] = FORMAT_VERSION
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SiteCalibration:
        """Rebuild a calibration from :meth:`to_dict` output (derived keys are ignored).

        Raises:
            ConfigError: a field is missing or the format version is unknown.
        """
        if data.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            message = f"calibration format version {data.get('format_version')!r} is not supported"
            raise ConfigError(message)
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            message = f"calibration record lacks {', '.join(missing)}"
            raise ConfigError(message)
        fields = {k: v for k, v in data.items() if k in names}
        fields["coefficients"] = {k: float(v) for k, v in fields["coefficients"].items()}
        fields["before"] = BinaryMetrics(**fields["before"])
        fields["after"] = BinaryMetrics(**fields["after"])
        return cls(**fields)


def fit_site_calibration(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    site: str,
    model_version: str,
    *,
    source: str = "",
    run_id: str = "",
    minimum: int = MIN_CELLS_PER_CLASS,
    clip: float = DEFAULT_CLIP,
) -> SiteCalibration:
    """Fit a site's Platt calibration on its labelled cells' raw probabilities.

    Args:
        y_true: `(n,)` 0/1 labels, 1 = blast.
        probabilities: `(n,)` the model's raw blast probabilities of the same cells, in [0, 1].
        site: the site's name.
        model_version: the model that produced ``probabilities``.
        source, run_id: recorded as they are.
        minimum: fewest cells of each class.
        clip: see :data:`DEFAULT_CLIP`.

    Returns:
        The calibration with its counts and its before/after metrics on these cells.

    Raises:
        ConfigError: an invalid site name.
        CalibrationError: fewer than ``minimum`` cells of a class, or scores that do not rise
            with the blast label at this site (a fitted slope <= 0: no recalibration repairs that).
        ValueError: mismatched shapes, labels other than 0/1, probabilities outside [0, 1].
    """
    validate_site_name(site)
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(probabilities, np.float64).ravel()
    if y.shape != p.shape:
        message = f"{y.size} labels but {p.size} probabilities"
        raise ValueError(message)
    if not set(np.unique(y)) <= {0, 1}:
        message = f"labels must be 0 or 1, found {sorted(set(np.unique(y).tolist()))}"
        raise ValueError(message)
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError("probabilities must be finite and in [0, 1]")
    n_blast, n_other = int(y.sum()), int(y.size - y.sum())
    check_counts(site, n_blast, n_other, minimum)

    x = _logits(p, clip)
    targets = np.where(y == 1, (n_blast + 1) / (n_blast + 2), 1 / (n_other + 2))
    # Equal total weight per class, mean weight 1; each cell enters once as blast (weight x
    # target) and once as other (weight x (1 - target)), which is the cross-entropy on soft targets.
    weights = np.where(y == 1, y.size / (2 * n_blast), y.size / (2 * n_other))
    features = np.concatenate([x, x])[:, None]
    labels = np.concatenate([np.ones_like(y), np.zeros_like(y)])
    sample_weight = np.concatenate([weights * targets, weights * (1 - targets)])
    regression = LogisticRegression(C=np.inf, solver="lbfgs", max_iter=1000, tol=1e-10)
    regression.fit(features, labels, sample_weight=sample_weight)
    slope, intercept = float(regression.coef_[0, 0]), float(regression.intercept_[0])
    before = compute_metrics(y, p, 0.5)
    if not slope > 0:
        message = (f"site {site}: the scores of model {model_version} do not rise with the blast label on these "
                   f"{y.size} cells (ROC AUC {before.roc_auc:.3f}, fitted slope {slope:.3g}); a calibration cannot "
                   f"repair that: check the labels, or retrain on this site's cells")
        raise CalibrationError(message)
    coefficients = {"slope": slope, "intercept": intercept}
    calibrated = expit(slope * x + intercept)
    return SiteCalibration(
        site=site, model_version=model_version, method=METHOD, coefficients=coefficients, clip=clip,
        threshold=CALIBRATED_THRESHOLD, n_blast=n_blast, n_other=n_other, before=before,
        after=compute_metrics(y, calibrated, CALIBRATED_THRESHOLD), created_at=datetime.now(UTC).isoformat(),
        source=source, run_id=run_id,
    )
