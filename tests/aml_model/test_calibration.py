import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit
from scipy.stats import norm

from aml_model.calibration import (
    CALIBRATED_COLUMN,
    MIN_BANDWIDTH,
    OPERATING_POINTS,
    OperatingPoint,
    SiteCalibration,
    call_probabilities,
    fit_site_calibration,
    validate_site_name,
)
from aml_model.errors import CalibrationError, ConfigError
from aml_model.evaluate import compute_metrics


def site_scores(
    n_blast: int, n_other: int, shift: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and raw probabilities whose ideal calibration is known.

    A latent score s is N(+1, 1) for blasts and N(-1, 1) for other cells, so the log likelihood
    ratio is 2s; the "model" reports sigmoid(s + shift). The balanced Platt fit should recover
    calibrated logit = 2 * logit(p) - 2 * shift.
    """
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_blast), np.zeros(n_other)].astype(int)
    s = np.where(y == 1, 1.0, -1.0) + rng.normal(size=y.size)
    return y, expit(s + shift)


def test_an_under_calling_site_gets_a_lower_raw_cut_and_more_sensitivity():
    y, p = site_scores(1000, 3000, shift=-2.0)
    calibration = fit_site_calibration(y, p, "lab-a", "v1")
    assert calibration.slope == pytest.approx(2.0, abs=0.2)
    assert calibration.intercept == pytest.approx(4.0, abs=0.4)
    assert calibration.threshold == 0.5
    assert calibration.raw_threshold == pytest.approx(expit(-2.0), abs=0.03)
    assert calibration.after.sensitivity > calibration.before.sensitivity + 0.3
    assert (calibration.n_blast, calibration.n_other) == (1000, 3000)
    assert calibration.after.n == calibration.before.n == 4000
    # A monotone map keeps the ranking: the ROC AUC does not move.
    assert calibration.after.roc_auc == pytest.approx(calibration.before.roc_auc)


def test_an_over_calling_site_gets_a_higher_raw_cut_and_more_specificity():
    y, p = site_scores(1000, 3000, shift=+2.0)
    calibration = fit_site_calibration(y, p, "lab-b", "v1")
    assert calibration.raw_threshold == pytest.approx(expit(2.0), abs=0.03)
    assert calibration.after.specificity > calibration.before.specificity + 0.3


def test_the_fit_does_not_depend_on_the_labelled_class_mix():
    y, p = site_scores(1000, 3000, shift=-1.0)
    mixed = fit_site_calibration(y, p, "lab-a", "v1")
    balanced = fit_site_calibration(y[:2000], p[:2000], "lab-a", "v1")  # 1000 blast, 1000 other
    assert mixed.raw_threshold == pytest.approx(balanced.raw_threshold, abs=0.04)


def test_perfectly_separated_cells_give_finite_platt_targets():
    y = np.r_[np.ones(10), np.zeros(10)].astype(int)
    p = np.r_[np.full(10, 0.9), np.full(10, 0.1)]
    calibration = fit_site_calibration(y, p, "lab-a", "v1")
    assert np.isfinite(calibration.slope) and calibration.slope > 0
    np.testing.assert_allclose(
        calibration.apply(np.array([0.9, 0.1])), [11 / 12, 1 / 12], atol=1e-4
    )


@pytest.mark.parametrize(("n_blast", "n_other"), [(9, 50), (50, 9), (0, 30)])
def test_too_few_cells_of_a_class_are_refused(n_blast, n_other):
    y, p = site_scores(n_blast, n_other, shift=0.0)
    with pytest.raises(
        CalibrationError, match=rf"at least 10 .* found {n_blast} blast and {n_other} other"
    ):
        fit_site_calibration(y, p, "lab-a", "v1")


def test_scores_that_fall_with_the_label_are_refused():
    y, p = site_scores(200, 200, shift=0.0)
    with pytest.raises(CalibrationError, match="do not rise with the blast label"):
        fit_site_calibration(y, 1 - p, "lab-a", "v1")


def test_bad_inputs_are_refused():
    y, p = site_scores(20, 20, shift=0.0)
    with pytest.raises(ValueError, match="40 labels but 39"):
        fit_site_calibration(y, p[:-1], "lab-a", "v1")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        fit_site_calibration(y, np.r_[p[:-1], np.nan], "lab-a", "v1")


def test_apply_is_monotonic_and_keeps_nan():
    y, p = site_scores(300, 300, shift=-1.5)
    calibration = fit_site_calibration(y, p, "lab-a", "v1")
    grid = np.linspace(0, 1, 2001)
    out = calibration.apply(grid)
    assert out.shape == grid.shape and np.all((out > 0) & (out < 1))
    assert np.all(np.diff(out) >= 0)
    assert np.all(np.diff(out[1:-1]) > 0), "strictly increasing inside the clip"
    assert np.isnan(calibration.apply(np.array([np.nan]))[0])


def test_to_dict_from_dict_round_trips_through_json():
    y, p = site_scores(40, 60, shift=1.0)
    calibration = fit_site_calibration(
        y, p, "Lab_07", "20260101T000000Z-abcdef12", source="s3://b/lab7", run_id="lab7-123"
    )
    data = json.loads(json.dumps(calibration.to_dict()))
    assert data["n_blast"] == 40 and data["n_other"] == 60 and data["method"] == "platt-balanced"
    assert set(data["before"]) >= {"accuracy", "sensitivity", "specificity", "roc_auc"}
    again = SiteCalibration.from_dict(data)
    assert again == calibration
    np.testing.assert_array_equal(again.apply(p), calibration.apply(p))
    # The derived figures are written for the record, and ignored on reading.
    assert data["blast_cutoff"] == 0.2 and set(data["operating_points"]) == set(OPERATING_POINTS)
    for name, stored in data["operating_points"].items():
        point = calibration.operating_points[name]
        assert stored["raw_threshold"] == pytest.approx(calibration.to_raw(point.threshold))
        assert stored["bias_at_cutoff"] == pytest.approx(
            0.2 * point.sensitivity + 0.8 * point.false_positive_rate - 0.2
        )
    assert data["operating_points"]["fraction"]["bias_at_cutoff"] == pytest.approx(0, abs=1e-9)
    del data["threshold"]
    with pytest.raises(ConfigError, match="lacks threshold"):
        SiteCalibration.from_dict(data)


def test_a_calibration_cannot_be_made_decreasing():
    y, p = site_scores(20, 20, shift=0.0)
    calibration = fit_site_calibration(y, p, "lab-a", "v1")
    with pytest.raises(ConfigError, match="slope must be > 0"):
        dataclasses.replace(calibration, coefficients={"slope": -1.0, "intercept": 0.0})


@pytest.mark.parametrize("name", ["lab-a", "LAB_7", "x", "a" * 64])
def test_valid_site_names(name):
    assert validate_site_name(name) == name


@pytest.mark.parametrize("name", ["", "../lab", "lab a", "lab.a", "lab/a", "a" * 65, "läb"])
def test_invalid_site_names_are_refused(name):
    with pytest.raises(ConfigError, match="site name"):
        validate_site_name(name)


def test_call_probabilities_prefer_the_calibrated_column():
    raw = pd.DataFrame({"probability": [0.2, 0.7]})
    np.testing.assert_array_equal(call_probabilities(raw), [0.2, 0.7])
    np.testing.assert_array_equal(
        call_probabilities(raw.assign(**{CALIBRATED_COLUMN: [0.6, 0.9]})), [0.6, 0.9]
    )


def _metrics(threshold: float = 0.5):
    return compute_metrics(np.array([1, 0]), np.array([0.9, 0.1]), threshold)


def test_the_expected_fraction_and_its_bias_by_hand():
    # The hidden lab: blasts 0.88 and other cells 0.32 blast-like at its balanced point.
    lab = OperatingPoint(0.5, 0.88, 0.32, _metrics())
    assert lab.expected_fraction(0.2) == pytest.approx(0.2 * 0.88 + 0.8 * 0.32)  # 0.432
    assert lab.bias(0.2) == pytest.approx(0.232)
    assert lab.expected_fraction(0.0) == pytest.approx(0.32) and lab.bias(1.0) == pytest.approx(
        -0.12
    )
    assert OperatingPoint(0.5, 1.0, 0.0, _metrics()).bias(0.2) == 0
    # Rates that cannot tell blasts from other cells show the same fraction whatever the patient's.
    blind = OperatingPoint(0.5, 0.3, 0.3, _metrics())
    assert blind.expected_fraction(0.0) == blind.expected_fraction(0.9) == pytest.approx(0.3)


def test_the_fraction_point_is_unbiased_at_the_cutoff_and_above_the_balanced_point():
    y, p = site_scores(50, 50, shift=-1.0)
    calibration = fit_site_calibration(y, p, "lab-a", "v1")
    balanced, fraction = (
        calibration.operating_point("balanced"),
        calibration.operating_point("fraction"),
    )
    assert (
        balanced.threshold == calibration.threshold == 0.5 and balanced.metrics == calibration.after
    )
    assert 0.2 * fraction.sensitivity + 0.8 * fraction.false_positive_rate == pytest.approx(
        0.2, abs=1e-9
    )
    # Near a balanced point the bias at 20% is (1 - 2 * 0.2) * (1 - se) > 0: the fraction point is stricter.
    assert balanced.bias(0.2) > 0.05
    assert fraction.threshold > balanced.threshold
    assert calibration.to_raw(fraction.threshold) > calibration.raw_threshold
    assert (
        fraction.sensitivity < balanced.sensitivity
        and fraction.false_positive_rate < balanced.false_positive_rate
    )
    # The counts on the labelled cells at the fraction threshold.
    assert fraction.metrics == compute_metrics(y, calibration.apply(p), fraction.threshold)
    other = fit_site_calibration(y, p, "lab-a", "v1", blast_cutoff=0.3).operating_point(
        "fraction", 0.3
    )
    assert 0.3 * other.sensitivity + 0.7 * other.false_positive_rate == pytest.approx(0.3, abs=1e-9)


def test_the_rates_are_kernel_shares_of_the_labelled_scores_by_hand():
    """Each class's cells share one score, so both kernels have the smallest bandwidth."""
    y = np.r_[np.ones(12), np.zeros(12)].astype(int)
    p = np.where(y == 1, expit(0.1), expit(-0.1))
    calibration = fit_site_calibration(y, p, "lab-a", "v1")
    for name in OPERATING_POINTS:
        point = calibration.operating_point(name)
        cut = logit(calibration.to_raw(point.threshold))
        assert point.sensitivity == pytest.approx(norm.sf((cut - 0.1) / MIN_BANDWIDTH), abs=1e-6)
        assert point.false_positive_rate == pytest.approx(
            norm.sf((cut + 0.1) / MIN_BANDWIDTH), abs=1e-6
        )
    # The symmetric site's balanced cut is logit 0: se = sf(-1) = 0.841, fpr = sf(1) = 0.159.
    balanced = calibration.operating_point("balanced")
    assert (balanced.sensitivity, balanced.false_positive_rate) == pytest.approx(
        (0.8413, 0.1587), abs=1e-3
    )


def test_a_perfectly_separated_site_is_unbiased_at_both_points():
    y = np.r_[np.ones(10), np.zeros(10)].astype(int)
    calibration = fit_site_calibration(y, np.r_[np.full(10, 0.9), np.full(10, 0.1)], "lab-a", "v1")
    for name in OPERATING_POINTS:
        point = calibration.operating_point(name)
        assert (point.sensitivity, point.false_positive_rate) == pytest.approx((1, 0), abs=1e-12)
        assert point.bias(0.2) == pytest.approx(0, abs=1e-12)
        assert 0.1 < calibration.to_raw(point.threshold) < 0.9, "between the two classes' scores"


def hidden_lab(n_blast: int, n_other: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A site where three in ten other cells look blast-like (a skewed, not a normal, score distribution)."""
    rng = np.random.default_rng(seed)
    other = np.where(
        rng.random(n_other) < 0.3, rng.normal(1, 1.5, n_other), rng.normal(-2, 1, n_other)
    )
    return np.r_[np.ones(n_blast), np.zeros(n_other)].astype(int), expit(
        np.r_[rng.normal(1.5, 1.2, n_blast), other]
    )


def test_on_a_skewed_site_the_fraction_point_removes_most_of_the_bias_on_unseen_cells():
    y_new, p_new = hidden_lab(20_000, 20_000, seed=99)
    biases = {name: [] for name in OPERATING_POINTS}
    for seed in range(5):
        calibration = fit_site_calibration(*hidden_lab(35, 50, seed), "lab-a", "v1")
        for name in OPERATING_POINTS:
            called = calibration.apply(p_new) >= calibration.operating_point(name).threshold
            biases[name].append(
                0.2 * called[y_new == 1].mean() + 0.8 * called[y_new == 0].mean() - 0.2
            )
    assert min(biases["balanced"]) > 0.1
    assert max(np.abs(biases["fraction"])) < 0.06 and abs(np.mean(biases["fraction"])) < 0.03


def test_a_calibration_stored_before_the_operating_points_still_loads():
    y, p = site_scores(40, 60, shift=1.0)
    calibration = fit_site_calibration(y, p, "lab-a", "v1")
    data = json.loads(json.dumps(calibration.to_dict()))
    for key in ("blast_cutoff", "operating_points"):
        del data[key]
    old = SiteCalibration.from_dict(data)
    assert old.operating_points == {} and old.blast_cutoff is None and old.threshold == 0.5
    balanced = old.operating_point("balanced", 0.2)
    assert balanced.threshold == 0.5 and balanced.metrics == calibration.after
    assert (
        np.isnan(balanced.sensitivity)
        and np.isnan(balanced.false_positive_rate)
        and np.isnan(balanced.bias(0.2))
    )
    with pytest.raises(
        ConfigError,
        match="site lab-a: its calibration for model v1 .* has no fraction operating "
        "point .* calibrate the site again, or call at the balanced",
    ):
        old.operating_point("fraction")
    assert "operating_points" in old.to_dict() and old.to_dict()["operating_points"] == {}


def test_unknown_operating_points_and_mismatched_cutoffs_are_refused():
    y, p = site_scores(30, 30, shift=0.0)
    calibration = fit_site_calibration(y, p, "lab-a", "v1")
    with pytest.raises(
        ConfigError, match="operating point 'youden' is not one of 'fraction', 'balanced'"
    ):
        calibration.operating_point("youden")
    with pytest.raises(
        ConfigError, match="unbiased at a blast cut-off of 0.2, not 0.3: calibrate the site again"
    ):
        calibration.operating_point("fraction", 0.3)
    # The balanced point does not depend on the cut-off.
    assert calibration.operating_point("balanced", 0.3) == calibration.operating_points["balanced"]
    assert calibration.operating_point("fraction", 0.2) == calibration.operating_points["fraction"]
    with pytest.raises(ValueError, match=r"blast cut-off must be in \(0, 1\), got 1.0"):
        fit_site_calibration(y, p, "lab-a", "v1", blast_cutoff=1.0)
    points = dict(calibration.operating_points)
    with pytest.raises(ConfigError, match=r"operating points \['youden'\] are not among"):
        dataclasses.replace(calibration, operating_points=points | {"youden": points["balanced"]})
    with pytest.raises(ConfigError, match="blast cut-off must be in"):
        dataclasses.replace(calibration, blast_cutoff=None)
    with pytest.raises(ConfigError, match="fraction threshold must be in"):
        dataclasses.replace(
            calibration,
            operating_points=points
            | {"fraction": dataclasses.replace(points["fraction"], threshold=1.0)},
        )
