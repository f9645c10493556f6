import dataclasses

import numpy as np
import pandas as pd
from scipy.special import expit

from aml_model.calibration import CALIBRATED_COLUMN, fit_site_calibration
from tasks.summarise import score_columns


def test_a_site_calibration_makes_the_cell_calls_and_keeps_the_raw_probability():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(30), np.zeros(30)].astype(int)
    fitted = fit_site_calibration(
        y, expit(np.where(y == 1, 1.0, -1.0) + rng.normal(size=60)), "lab-a", "v1"
    )
    # Raw cut at sigmoid(-2) = 0.12: cells between 0.12 and 0.5 turn blast-like.
    calibration = dataclasses.replace(fitted, coefficients={"slope": 1.0, "intercept": 2.0})
    cells = pd.DataFrame({"cell_id": ["a", "b", "c"], "zarr_index": [2, 0, 1]})
    probabilities = np.array([0.05, 0.3, 0.9, np.nan], np.float32)

    raw = score_columns(cells, probabilities, 0.5, "v1")
    assert CALIBRATED_COLUMN not in raw and raw["predicted_label"].tolist() == [
        "blast",
        "normal",
        "normal",
    ]

    scored = score_columns(cells, probabilities, calibration.threshold, "v1", calibration)
    np.testing.assert_array_equal(scored["probability"], np.float32([0.9, 0.05, 0.3]))
    np.testing.assert_allclose(
        scored[CALIBRATED_COLUMN],
        expit(np.log(np.array([0.9, 0.05, 0.3]) / (1 - np.array([0.9, 0.05, 0.3]))) + 2),
        rtol=1e-5,
    )
    assert scored["predicted_label"].tolist() == ["blast", "normal", "blast"]
    # Rescoring without the site drops the calibrated column of an earlier scoring.
    assert CALIBRATED_COLUMN not in score_columns(scored, probabilities, 0.5, "v1")
