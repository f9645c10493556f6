import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from aml_model.calibration import (CALIBRATED_COLUMN, SiteCalibration, call_probabilities, fit_site_calibration,
                                   validate_site_name)
from aml_model.errors import CalibrationError, ConfigError


def site_scores(n_blast: int, n_other: int, shift: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
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
    np.testing.assert_allclose(calibration.apply(np.array([0.9, 0.1])), [11 / 12, 1 / 12], atol=1e-4)


@pytest.mark.parametrize(("n_blast", "n_other"), [(9, 50), (50, 9), (0, 30)])
def test_too_few_cells_of_a_class_are_refused(n_blast, n_other):
    y, p = site_scores(n_blast, n_other, shift=0.0)
    with pytest.raises(CalibrationError, match=rf"at least 10 .* found {n_blast} blast and {n_other} other"):
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
    calibration = fit_site_calibration(y, p, "Lab_07", "20260101T000000Z-abcdef12", source="s3://b/lab7",
                                       run_id="lab7-123")
    data = json.loads(json.dumps(calibration.to_dict()))
    assert data["n_blast"] == 40 and data["n_other"] == 60 and data["method"] == "platt-balanced"
    assert set(data["before"]) >= {"accuracy", "sensitivity", "specificity", "roc_auc"}
    again = SiteCalibration.from_dict(data)
    assert again == calibration
    np.testing.assert_array_equal(again.apply(p), calibration.apply(p))
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
    np.testing.assert_array_equal(call_probabilities(raw.assign(**{CALIBRATED_COLUMN: [0.6, 0.9]})), [0.6, 0.9])
