import numpy as np
import pandas as pd
import pytest
from scipy.stats import beta

from aml_model.aggregate import (
    CORRECTED_COLUMNS,
    PATIENT_COLUMNS,
    RESEARCH_NOTE,
    rogan_gladen,
    summarise_cohort,
    summarise_patient,
    with_corrected_fraction,
)
from aml_model.config import SummaryConfig
from tests.corpus import lmu_rows


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    alpha = 1 - level
    low = 0.0 if k == 0 else beta.ppf(alpha / 2, k, n - k + 1)
    high = 1.0 if k == n else beta.ppf(1 - alpha / 2, k + 1, n - k)
    return low, high


def probs(n_blast: int, n_normal: int) -> np.ndarray:
    return np.r_[np.full(n_blast, 0.9), np.full(n_normal, 0.1)]


def test_hand_worked_bounds_at_the_extremes():
    none = summarise_patient("P", probs(0, 100), 0, SummaryConfig(), "v1")
    assert none.ci_low == 0 and none.ci_high == pytest.approx(1 - 0.025 ** (1 / 100))  # 0.0362
    assert none.call == "NOT_SUSPECTED"
    every = summarise_patient("P", probs(100, 0), 0, SummaryConfig(), "v1")
    assert every.ci_low == pytest.approx(0.025 ** (1 / 100)) and every.ci_high == 1  # 0.9638
    assert every.call == "AML_SUSPECTED"


@pytest.mark.parametrize(
    ("k", "n", "call"),
    [
        (20, 100, "INDETERMINATE"),
        (31, 100, "AML_SUSPECTED"),
        (11, 100, "NOT_SUSPECTED"),
        (60, 99, "INSUFFICIENT_CELLS"),
    ],
)
def test_interval_matches_scipy_beta_and_each_call_branch(k, n, call):
    summary = summarise_patient("P", probs(k, n - k), 0, SummaryConfig(), "v1")
    low, high = clopper_pearson(k, n)
    assert summary.ci_low == pytest.approx(low, abs=1e-9) and summary.ci_high == pytest.approx(
        high, abs=1e-9
    )
    assert summary.n_blast_like == k and summary.blast_fraction == pytest.approx(k / n)
    assert summary.call == call


def test_lower_bound_exactly_at_the_cutoff_is_suspected():
    low, _ = clopper_pearson(30, 100)
    assert (
        summarise_patient("P", probs(30, 70), 0, SummaryConfig(blast_cutoff=low), "v").call
        == "AML_SUSPECTED"
    )
    assert (
        summarise_patient("P", probs(30, 70), 0, SummaryConfig(blast_cutoff=low + 1e-9), "v").call
        == "INDETERMINATE"
    )


def test_threshold_is_inclusive_and_recorded():
    summary = summarise_patient(
        "P", np.array([0.5, 0.49, 0.7]), 0, SummaryConfig(min_cells=1), "v9"
    )
    assert summary.n_blast_like == 2
    assert summary.mean_probability == pytest.approx(np.mean([0.5, 0.49, 0.7]))
    assert summary.median_probability == pytest.approx(0.5)
    assert (summary.model_version, summary.threshold, summary.note) == ("v9", 0.5, RESEARCH_NOTE)


def test_no_cells_and_quarantine_flags():
    empty = summarise_patient("P", np.zeros(0), 5, SummaryConfig(), "v")
    assert empty.call == "INSUFFICIENT_CELLS" and np.isnan(empty.blast_fraction)
    assert (
        empty.n_cells == 5
        and "no_scored_cells" in empty.qc_flags
        and "high_quarantine_rate" in empty.qc_flags
    )
    clean = summarise_patient("P", probs(0, 200), 2, SummaryConfig(), "v")
    assert clean.qc_flags == "" and clean.n_cells == 202


def test_quarantine_flag_fires_above_the_set_share_and_not_at_or_below_it():
    # The case: 2 of 42 inputs (4.8%) lost, which the default share (2%) flags.
    lost_two = summarise_patient("P", probs(0, 40), 2, SummaryConfig(min_cells=1), "v")
    assert lost_two.qc_flags == "high_quarantine_rate" and lost_two.max_quarantined_share == 0.02
    # 2 of 100 is the default share itself: not above it; 3 of 100 is.
    enough = SummaryConfig(min_cells=1)
    assert summarise_patient("P", probs(0, 98), 2, enough, "v").qc_flags == ""
    assert summarise_patient("P", probs(0, 97), 3, enough, "v").qc_flags == "high_quarantine_rate"
    # The share is a setting: 4.8% passes at 5%, and the row records the share it was called at.
    lenient = summarise_patient(
        "P", probs(0, 40), 2, SummaryConfig(min_cells=1, max_quarantined_share=0.05), "v"
    )
    assert lenient.qc_flags == "" and lenient.max_quarantined_share == 0.05
    with pytest.raises(ValueError, match="max_quarantined_share"):
        SummaryConfig(max_quarantined_share=1.5)


def test_cohorts_composed_from_the_real_expert_labels(lmu_cells):
    """Patients dealt the LMU set's expert labels (labels.csv) in known blast fractions.

    No image is read: the call depends on probabilities only, and a fixed scorer (0.9 for a
    blast, 0.1 for a normal cell) stands in for the model.
    """
    rows = lmu_rows(lmu_cells)
    blasts = [r for r in rows if r["label"] == "blast"]
    normals = [r for r in rows if r["label"] == "normal"]
    plan = {"F00": 0.0, "F10": 0.1, "F20": 0.2, "F30": 0.3, "F60": 0.6}
    cells, used_b, used_n = [], 0, 0
    for patient, fraction in plan.items():
        n_blast = round(150 * fraction)
        picked = blasts[used_b : used_b + n_blast] + normals[used_n : used_n + 150 - n_blast]
        used_b, used_n = used_b + n_blast, used_n + 150 - n_blast
        cells += [
            {
                "patient_id": patient,
                "source_uri": r["file"],
                "probability": 0.9 if r["label"] == "blast" else 0.1,
            }
            for r in picked
        ]
    cells.append({"patient_id": "FEW", "source_uri": blasts[-1]["file"], "probability": 0.9})
    quarantine = pd.DataFrame(
        [{"patient_id": "F10", "source_uri": "x", "reason": "empty file (0 bytes)"}]
    )
    table = summarise_cohort(
        pd.DataFrame(cells), quarantine, SummaryConfig(), "v1", extra_patients=("EMPTY",)
    )
    assert tuple(table.columns) == PATIENT_COLUMNS
    calls = dict(zip(table["patient_id"], table["call"], strict=True))
    assert calls == {
        "EMPTY": "INSUFFICIENT_CELLS",
        "F00": "NOT_SUSPECTED",
        "F10": "NOT_SUSPECTED",
        "F20": "INDETERMINATE",
        "F30": "AML_SUSPECTED",
        "F60": "AML_SUSPECTED",
        "FEW": "INSUFFICIENT_CELLS",
    }
    f30 = table.set_index("patient_id").loc["F30"]
    assert (f30.n_scored, f30.n_blast_like) == (150, 45)
    assert (f30.ci_low, f30.ci_high) == pytest.approx(clopper_pearson(45, 150))
    assert table.set_index("patient_id").loc["F10"].n_quarantined == 1
    assert (table["note"] == RESEARCH_NOTE).all()


def test_rogan_gladen_by_hand():
    # The hidden lab's rates: se 0.88, fpr 0.32; a patient at 20% blasts shows 43.2% in expectation.
    observed = np.array([0.432, 0.32, 0.88, 0.6, 0.1, 0.95, np.nan])
    np.testing.assert_allclose(
        rogan_gladen(observed, 0.88, 0.32), [0.2, 0.0, 1.0, 0.28 / 0.56, 0.0, 1.0, np.nan]
    )  # below fpr and above se: clipped
    assert rogan_gladen(np.array([0.2]), 1.0, 0.0)[0] == 0.2, "perfect rates change nothing"


@pytest.mark.parametrize(
    ("sensitivity", "false_positive_rate"), [(0.3, 0.3), (0.2, 0.4), (np.nan, 0.1), (0.8, np.nan)]
)
def test_rogan_gladen_without_information_is_nan(sensitivity, false_positive_rate):
    assert np.isnan(rogan_gladen(np.array([0.0, 0.3, 1.0]), sensitivity, false_positive_rate)).all()


def test_the_corrected_columns_transform_the_fraction_and_its_interval():
    cells = pd.DataFrame(
        {
            "patient_id": ["A"] * 150 + ["B"] * 120,
            "probability": np.r_[probs(45, 105), probs(0, 120)],
        }
    )
    table = summarise_cohort(
        cells,
        pd.DataFrame(columns=["patient_id"]),
        SummaryConfig(),
        "v1",
        extra_patients=("EMPTY",),
    )
    corrected = with_corrected_fraction(table, 0.8, 0.05)
    assert tuple(corrected.columns) == (*PATIENT_COLUMNS, *CORRECTED_COLUMNS)
    pd.testing.assert_frame_equal(corrected[list(PATIENT_COLUMNS)], table)
    a, b, empty = (corrected.set_index("patient_id").loc[pid] for pid in ("A", "B", "EMPTY"))
    low, high = clopper_pearson(45, 150)
    assert a.blast_fraction_corrected == pytest.approx((0.3 - 0.05) / 0.75)  # 1/3
    assert (a.corrected_ci_low, a.corrected_ci_high) == pytest.approx(
        ((low - 0.05) / 0.75, (high - 0.05) / 0.75)
    )
    # No blast-like cell: below the false-positive rate, clipped to 0; the upper bound (0.030) too.
    assert (b.blast_fraction_corrected, b.corrected_ci_low, b.corrected_ci_high) == (0.0, 0.0, 0.0)
    assert np.isnan(
        [empty.blast_fraction_corrected, empty.corrected_ci_low, empty.corrected_ci_high]
    ).all()


@pytest.mark.parametrize("k", [10, 25, 30, 33, 45])
def test_at_a_fraction_operating_point_the_corrected_interval_gives_the_same_call(k):
    # 0.2 * 0.6 + 0.8 * 0.1 = 0.2: the cut-off maps to itself, so either interval gives the same call.
    summary = summarise_patient("P", probs(k, 150 - k), 0, SummaryConfig(), "v1")
    low, high = rogan_gladen(np.array([summary.ci_low, summary.ci_high]), 0.6, 0.1)
    assert rogan_gladen(np.array([0.2]), 0.6, 0.1)[0] == pytest.approx(0.2)
    corrected_call = (
        "AML_SUSPECTED" if low >= 0.2 else "NOT_SUSPECTED" if high < 0.2 else "INDETERMINATE"
    )
    assert corrected_call == summary.call
