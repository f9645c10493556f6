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

**Balanced threshold.** 0.5 on the calibrated scale. With equal class weights, calibrated = 0.5
is where the fitted likelihood ratio of blast to other is 1, which is exactly where Youden's J
(sensitivity + specificity - 1) is largest under the fitted model. Picking the empirical Youden
point on the site's cells instead was rejected: with tens of cells per class it jumps between
neighbouring scores, sits on one training cell's score, and so overfits the calibration set; the
fitted (two-parameter) point is its smoothed estimate.

**Operating points.** A site stores two thresholds on the calibrated scale (:data:`OPERATING_POINTS`)
and ``score --site`` calls at one, by default :data:`DEFAULT_OPERATING_POINT`:

- ``balanced``: the 0.5 above;
- ``fraction``: the threshold ``t`` at which a patient whose true blast fraction is the blast
  cut-off ``c`` (0.2, the WHO criterion) shows a blast-like fraction of ``c`` in expectation:
  ``c * se(t) + (1 - c) * fpr(t) = c``, ``se`` and ``fpr`` the shares of blasts and of other
  cells that are blast-like at ``t``.

A patient with true blast fraction ``f`` shows ``f * se + (1 - f) * fpr`` in expectation. A smear
holds more other cells than blasts, so the false-positive rate weighs ``(1 - f) / f`` times as
much as the missed blasts (4 times at 20%): a site with se 0.88 and fpr 0.32 at its balanced point
shows 43% blast-like cells at 20% blasts (bias +0.23) and 32% at none, and nearly every patient
is suspected. Even at an exactly balanced point (se = 1 - fpr) the bias at ``c`` is
``(1 - 2c)(1 - se) > 0``, so the fraction point lies above the balanced one. The call compares
the blast-like fraction's interval with ``c``; at the fraction point the expected fraction is
``c + (f - c) * (se - fpr)``, equal to ``c`` exactly when the true fraction is, so the call's
boundary is where it belongs. Away from the cut-off the fraction is shrunk towards it by Youden's
J (se - fpr), an error that grows where the call is least in doubt and that the patient table's
corrected fraction (:func:`aml_model.aggregate.rogan_gladen`) undoes. Minimising the expected
error of the fraction over a range of true fractions was not chosen: it needs a range and a
weighting of patients (a prior) that a lab does not have, and its threshold moves with them; the
cut-off is the one fraction the call turns on. Hence ``fraction`` is the default, the per-patient
call being the product; its price is fewer blasts called blast-like per cell. ``balanced`` keeps
the per-cell calls balanced.

**The rates ``se(t)`` and ``fpr(t)``** are estimated from the site's labelled cells (about 50 of
each class) on the logit scale ``x = logit(p)``. The empirical curves are step functions: the
root would sit on, or jump between, single cells' scores, and one relabelled cell would move it.
A binormal fit is smooth (the equal-variance one is the model under which Platt's linear log
likelihood ratio holds), but it extrapolates the other cells' upper tail from their mean and
spread, and the fraction point lies in that tail (an fpr of a few %): where some other cells look
blast-like, or scores pile up at the clip, it is off by several points. So each class's
distribution of ``x`` is smoothed with a Gaussian kernel (kernel-smoothed ROC curves: Zou, Hall &
Shapiro 1997; Lloyd 1998), bandwidth by Silverman's rule of thumb, at least :data:`MIN_BANDWIDTH`:
the curves are smooth and strictly decreasing, so the root exists, is unique and moves
continuously with the cells, and no shape is assumed. On simulated sites of 35 blasts and 50
other cells (normal, skewed and saturated logit scores) the true bias at the cut-off at the
threshold found this way was within 0.02 on average with an RMS of 0.02 to 0.035, about what 85
labelled cells allow; binormal fits were off by up to 0.06 on average. Both points' rates are
these smoothed estimates; the counts on the labelled cells at each threshold are kept beside them
(:attr:`OperatingPoint.metrics`, in-sample).

Nothing here knows about Prefect or storage; ``tasks/calibration.py`` stores the result next to
the model.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.special import expit, logit
from scipy.stats import norm
from sklearn.linear_model import LogisticRegression

from aml_model.config import SummaryConfig
from aml_model.errors import CalibrationError, ConfigError
from aml_model.evaluate import BinaryMetrics, compute_metrics

__all__ = [
    "CALIBRATED_COLUMN",
    "DEFAULT_CLIP",
    "DEFAULT_OPERATING_POINT",
    "METHOD",
    "MIN_BANDWIDTH",
    "MIN_CELLS_PER_CLASS",
    "OPERATING_POINTS",
    "OperatingPoint",
    "SiteCalibration",
    "call_probabilities",
    "check_counts",
    "fit_site_calibration",
    "validate_site_name",
]

METHOD = "platt-balanced"
"""Platt scaling on logit(p) with Platt's smoothed targets and equal class weights."""
MIN_CELLS_PER_CLASS = 10
"""Fewest labelled cells of each class (blast, other) a calibration is fitted on."""
DEFAULT_CLIP = 1e-6
"""Raw probabilities are clipped to [clip, 1 - clip] before the logit (float32 scores reach 0 and 1)."""
CALIBRATED_THRESHOLD = 0.5
CALIBRATED_COLUMN = "probability_calibrated"
"""Column of a scored cell table holding the calibrated probability, when a site calibration was applied."""
OPERATING_POINTS = ("fraction", "balanced")
"""A site's thresholds: blast-like fraction unbiased at the blast cut-off; sensitivity and specificity balanced."""
DEFAULT_OPERATING_POINT = "fraction"
"""The operating point ``score --site`` calls at unless told otherwise (the per-patient call is the product)."""
MIN_BANDWIDTH = 0.1
"""Smallest kernel bandwidth of the smoothed rates, logit units: a class whose labelled cells share one score
(a saturated model's may) still needs a kernel; 0.1 is a change of p of 2.5% around 0.5."""
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
        message = (
            f"site {site}: calibration needs at least {minimum} labelled cells of each class; found "
            f"{n_blast} blast and {n_other} other cells. Label more cells of the missing class and run again"
        )
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


def _bandwidth(x: np.ndarray) -> float:
    """Silverman's rule of thumb, ``0.9 * min(sd, IQR / 1.349) * n^(-1/5)``, at least :data:`MIN_BANDWIDTH`.

    The IQR is passed over when it is 0 (more than half the cells share one score, at the clip).
    """
    sd = float(np.std(x, ddof=1)) if x.size > 1 else 0.0
    iqr = float(np.subtract(*np.percentile(x, [75, 25]))) / 1.349
    spread = min(sd, iqr) if iqr > 0 else sd
    return max(0.9 * spread * x.size**-0.2, MIN_BANDWIDTH)


class _SmoothedRates:
    """Kernel-smoothed shares of a site's blasts and other cells whose logit score is at or above a threshold."""

    def __init__(self, x_blast: np.ndarray, x_other: np.ndarray) -> None:
        self._classes = [(x, _bandwidth(x)) for x in (x_blast, x_other)]

    def at(self, t: float) -> tuple[float, float]:
        """(sensitivity, false-positive rate) at logit threshold ``t``."""
        se, fpr = (float(norm.sf((t - x) / h).mean()) for x, h in self._classes)
        return se, fpr

    def unbiased_at(self, cutoff: float) -> float:
        """The logit threshold at which ``cutoff * se + (1 - cutoff) * fpr = cutoff``.

        That is ``(1 - cutoff) * fpr = cutoff * (1 - se)``: the difference falls strictly from
        ``1 - cutoff`` to ``-cutoff`` as the threshold rises, so the root is unique; ten bandwidths
        beyond the scores it is within 1e-23 of those limits, which brackets it.
        """
        (x_blast, h_blast), (x_other, h_other) = self._classes

        def excess(t: float) -> float:
            # The missed share from the lower tail, not as 1 - se: between well separated classes
            # both tails are far below float64's resolution of 1, and their balance sets the root.
            missed = norm.cdf((t - x_blast) / h_blast).mean()
            return float((1 - cutoff) * norm.sf((t - x_other) / h_other).mean() - cutoff * missed)

        reach = 10 * max(h for _, h in self._classes)
        low = min(float(x.min()) for x, _ in self._classes) - reach
        high = max(float(x.max()) for x, _ in self._classes) + reach
        return float(brentq(excess, low, high, xtol=1e-12))


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold of a site's calibration and the site's blast-like rates at it.

    Attributes:
        threshold: a cell whose calibrated probability is >= threshold is blast-like.
        sensitivity: estimated share of the site's blasts that are blast-like (kernel-smoothed,
            see the module docstring); NaN when unknown (a calibration stored before the rates were).
        false_positive_rate: estimated share of the site's other cells that are blast-like; NaN
            when unknown.
        metrics: the counts on the labelled cells at ``threshold`` (in-sample).
    """

    threshold: float
    sensitivity: float
    false_positive_rate: float
    metrics: BinaryMetrics

    def expected_fraction(self, true_fraction: float) -> float:
        """The blast-like fraction a patient with this true blast fraction shows in expectation."""
        return true_fraction * self.sensitivity + (1 - true_fraction) * self.false_positive_rate

    def bias(self, true_fraction: float) -> float:
        """Expected blast-like fraction minus ``true_fraction`` (a blast fraction in [0, 1])."""
        return self.expected_fraction(true_fraction) - true_fraction

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OperatingPoint:
        """Read back ``dataclasses.asdict`` output (derived keys are ignored)."""
        return cls(
            threshold=float(data["threshold"]),
            sensitivity=float(data["sensitivity"]),
            false_positive_rate=float(data["false_positive_rate"]),
            metrics=BinaryMetrics(**data["metrics"]),
        )


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
        threshold: the balanced operating point's threshold (0.5): a cell whose calibrated
            probability is >= threshold is blast-like there.
        n_blast, n_other: labelled cells of each class it was fitted on.
        before: metrics of the raw probabilities at 0.5 on those cells.
        after: metrics of the calibrated probabilities at ``threshold`` on the same cells (an
            in-sample figure: it shows what the calibration changes, not how well it generalises).
        created_at: ISO 8601 UTC time of the fit.
        source: where the labelled cells came from (URL), for the record.
        run_id: the store run that holds those cells.
        blast_cutoff: the blast cut-off the ``fraction`` operating point aims at; None in a
            calibration stored before the operating points were.
        operating_points: :data:`OPERATING_POINTS` name -> :class:`OperatingPoint`; empty in a
            calibration stored before them (:meth:`operating_point` then offers ``balanced`` only).
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
    blast_cutoff: float | None = None
    operating_points: dict[str, OperatingPoint] = dataclasses.field(default_factory=dict)

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
        unknown = sorted(set(self.operating_points) - set(OPERATING_POINTS))
        if unknown:
            message = (
                f"calibration operating points {unknown} are not among {list(OPERATING_POINTS)}"
            )
            raise ConfigError(message)
        if self.operating_points and not (
            self.blast_cutoff is not None and 0 < self.blast_cutoff < 1
        ):
            message = f"calibration blast cut-off must be in (0, 1), got {self.blast_cutoff!r}"
            raise ConfigError(message)
        for name, point in self.operating_points.items():
            if not 0 < point.threshold < 1:
                message = f"calibration {name} threshold must be in (0, 1), got {point.threshold!r}"
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

    def to_raw(self, threshold: float) -> float:
        """The raw probability whose calibrated value is ``threshold``: a cut on the model's scale."""
        return float(expit((logit(threshold) - self.intercept) / self.slope))

    @property
    def raw_threshold(self) -> float:
        """The balanced threshold on the model's scale."""
        return self.to_raw(self.threshold)

    def operating_point(self, name: str, blast_cutoff: float | None = None) -> OperatingPoint:
        """The operating point ``name`` (one of :data:`OPERATING_POINTS`).

        Args:
            name: "fraction" or "balanced".
            blast_cutoff: the cut-off the calls will be made at; the ``fraction`` point is refused
                for another cut-off than its own (it is unbiased at its own only). None: not checked.

        Raises:
            ConfigError: an unknown name; ``fraction`` from a calibration stored before it existed,
                or for another blast cut-off.
        """
        if name not in OPERATING_POINTS:
            message = (
                f"operating point {name!r} is not one of {', '.join(map(repr, OPERATING_POINTS))}"
            )
            raise ConfigError(message)
        if name in self.operating_points:
            if (
                name == "fraction"
                and blast_cutoff is not None
                and not math.isclose(blast_cutoff, self.blast_cutoff)
            ):
                message = (
                    f"site {self.site}: its fraction operating point is unbiased at a blast cut-off of "
                    f"{self.blast_cutoff:g}, not {blast_cutoff:g}: calibrate the site again at that "
                    f"cut-off, or call at the balanced operating point"
                )
                raise ConfigError(message)
            return self.operating_points[name]
        if name == "balanced":
            return OperatingPoint(self.threshold, math.nan, math.nan, self.after)
        message = (
            f"site {self.site}: its calibration for model {self.model_version} ({self.created_at}) has no "
            f"fraction operating point (it was stored before they existed): calibrate the site again, or "
            f"call at the balanced operating point"
        )
        raise ConfigError(message)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary; :meth:`from_dict` reads it back.

        Derived figures are written for the record: the raw thresholds and, per operating point,
        the expected bias of the blast-like fraction at the blast cut-off (``bias_at_cutoff``).
        """
        out = dataclasses.asdict(self)
        out["raw_threshold"] = self.raw_threshold
        for name, point in self.operating_points.items():
            out["operating_points"][name] |= {
                "raw_threshold": self.to_raw(point.threshold),
                "bias_at_cutoff": point.bias(self.blast_cutoff),
            }
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
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(data))
        if missing:
            message = f"calibration record lacks {', '.join(missing)}"
            raise ConfigError(message)
        fields = {k: v for k, v in data.items() if k in names}
        fields["coefficients"] = {k: float(v) for k, v in fields["coefficients"].items()}
        fields["before"] = BinaryMetrics(**fields["before"])
        fields["after"] = BinaryMetrics(**fields["after"])
        fields["operating_points"] = {
            name: OperatingPoint.from_dict(point)
            for name, point in fields.get("operating_points", {}).items()
        }
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
    blast_cutoff: float = SummaryConfig.blast_cutoff,
) -> SiteCalibration:
    """Fit a site's Platt calibration on its labelled cells' raw probabilities, and its operating points.

    Args:
        y_true: `(n,)` 0/1 labels, 1 = blast.
        probabilities: `(n,)` the model's raw blast probabilities of the same cells, in [0, 1].
        site: the site's name.
        model_version: the model that produced ``probabilities``.
        source, run_id: recorded as they are.
        minimum: fewest cells of each class.
        clip: see :data:`DEFAULT_CLIP`.
        blast_cutoff: the blast fraction, in (0, 1), at which the ``fraction`` operating point's
            expected blast-like fraction is unbiased.

    Returns:
        The calibration with its counts, its before/after metrics on these cells, and both
        operating points with the site's estimated rates.

    Raises:
        ConfigError: an invalid site name.
        CalibrationError: fewer than ``minimum`` cells of a class, or scores that do not rise
            with the blast label at this site (a fitted slope <= 0: no recalibration repairs that).
        ValueError: mismatched shapes, labels other than 0/1, probabilities outside [0, 1], a
            blast cut-off outside (0, 1).
    """
    validate_site_name(site)
    if not 0 < blast_cutoff < 1:
        message = f"blast cut-off must be in (0, 1), got {blast_cutoff!r}"
        raise ValueError(message)
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
        message = (
            f"site {site}: the scores of model {model_version} do not rise with the blast label on these "
            f"{y.size} cells (ROC AUC {before.roc_auc:.3f}, fitted slope {slope:.3g}); a calibration cannot "
            f"repair that: check the labels, or retrain on this site's cells"
        )
        raise CalibrationError(message)
    coefficients = {"slope": slope, "intercept": intercept}
    calibrated = expit(slope * x + intercept)
    rates = _SmoothedRates(x[y == 1], x[y == 0])

    def point(threshold: float, cut: float) -> OperatingPoint:
        # The rates are smoothed on the logit of the raw scores: ``cut`` is ``threshold`` on that scale.
        return OperatingPoint(threshold, *rates.at(cut), compute_metrics(y, calibrated, threshold))

    fraction_cut = rates.unbiased_at(blast_cutoff)
    points = {
        "fraction": point(float(expit(slope * fraction_cut + intercept)), fraction_cut),
        "balanced": point(CALIBRATED_THRESHOLD, (logit(CALIBRATED_THRESHOLD) - intercept) / slope),
    }
    return SiteCalibration(
        site=site,
        model_version=model_version,
        method=METHOD,
        coefficients=coefficients,
        clip=clip,
        threshold=CALIBRATED_THRESHOLD,
        n_blast=n_blast,
        n_other=n_other,
        before=before,
        after=points["balanced"].metrics,
        created_at=datetime.now(UTC).isoformat(),
        source=source,
        run_id=run_id,
        blast_cutoff=blast_cutoff,
        operating_points=points,
    )
