import numpy as np
import pandas as pd
import pytest
from scipy.stats import beta

from aml_model.aggregate import PATIENT_COLUMNS, RESEARCH_NOTE, summarise_cohort, summarise_patient
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


@pytest.mark.parametrize(("k", "n", "call"), [
    (20, 100, "INDETERMINATE"), (31, 100, "AML_SUSPECTED"), (11, 100, "NOT_SUSPECTED"), (60, 99, "INSUFFICIENT_CELLS"),
])
def test_interval_matches_scipy_beta_and_each_call_branch(k, n, call):
    summary = summarise_patient("P", probs(k, n - k), 0, SummaryConfig(), "v1")
    low, high = clopper_pearson(k, n)
    assert summary.ci_low == pytest.approx(low, abs=1e-9) and summary.ci_high == pytest.approx(high, abs=1e-9)
    assert summary.n_blast_like == k and summary.blast_fraction == pytest.approx(k / n)
    assert summary.call == call


def test_lower_bound_exactly_at_the_cutoff_is_suspected():
    low, _ = clopper_pearson(30, 100)
    assert summarise_patient("P", probs(30, 70), 0, SummaryConfig(blast_cutoff=low), "v").call == "AML_SUSPECTED"
    assert summarise_patient("P", probs(30, 70), 0, SummaryConfig(blast_cutoff=low + 1e-9), "v").call == "INDETERMINATE"


def test_threshold_is_inclusive_and_recorded():
    summary = summarise_patient("P", np.array([0.5, 0.49, 0.7]), 0, SummaryConfig(min_cells=1), "v9")
    assert summary.n_blast_like == 2
    assert summary.mean_probability == pytest.approx(np.mean([0.5, 0.49, 0.7]))
    assert summary.median_probability == pytest.approx(0.5)
    assert (summary.model_version, summary.threshold, summary.note) == ("v9", 0.5, RESEARCH_NOTE)


def test_no_cells_and_quarantine_flags():
    empty = summarise_patient("P", np.zeros(0), 5, SummaryConfig(), "v")
    assert empty.call == "INSUFFICIENT_CELLS" and np.isnan(empty.blast_fraction)
    assert empty.n_cells == 5 and "no_scored_cells" in empty.qc_flags and "high_quarantine_rate" in empty.qc_flags
    clean = summarise_patient("P", probs(0, 200), 2, SummaryConfig(), "v")
    assert clean.qc_flags == "" and clean.n_cells == 202


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
        picked = blasts[used_b:used_b + n_blast] + normals[used_n:used_n + 150 - n_blast]
        used_b, used_n = used_b + n_blast, used_n + 150 - n_blast
        cells += [{"patient_id": patient, "source_uri": r["file"], "probability": 0.9 if r["label"] == "blast" else 0.1}
                  for r in picked]
    cells.append({"patient_id": "FEW", "source_uri": blasts[-1]["file"], "probability": 0.9})
    quarantine = pd.DataFrame([{"patient_id": "F10", "source_uri": "x", "reason": "empty file (0 bytes)"}])
    table = summarise_cohort(pd.DataFrame(cells), quarantine, SummaryConfig(), "v1", extra_patients=("EMPTY",))
    assert tuple(table.columns) == PATIENT_COLUMNS
    calls = dict(zip(table["patient_id"], table["call"], strict=True))
    assert calls == {"EMPTY": "INSUFFICIENT_CELLS", "F00": "NOT_SUSPECTED", "F10": "NOT_SUSPECTED",
                     "F20": "INDETERMINATE", "F30": "AML_SUSPECTED", "F60": "AML_SUSPECTED", "FEW": "INSUFFICIENT_CELLS"}
    f30 = table.set_index("patient_id").loc["F30"]
    assert (f30.n_scored, f30.n_blast_like) == (150, 45)
    assert (f30.ci_low, f30.ci_high) == pytest.approx(clopper_pearson(45, 150))
    assert table.set_index("patient_id").loc["F10"].n_quarantined == 1
    assert (table["note"] == RESEARCH_NOTE).all()
