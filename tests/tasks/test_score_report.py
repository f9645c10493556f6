"""The cohort-overview markdown a complete scoring publishes."""

from __future__ import annotations

import numpy as np
import pandas as pd

from aml_model.aggregate import RESEARCH_NOTE
from aml_model.config import SummaryConfig
from tasks.score_report import overview_markdown
from tasks.store import Store


def test_the_overview_counts_every_call_and_lists_every_patient():
    patients = pd.DataFrame(
        {
            "patient_id": ["A", "B", "C"],
            "n_scored": [120, 150, 0],
            "n_blast_like": [60, 3, 0],
            "blast_fraction": [0.5, 0.02, np.nan],
            "ci_low": [0.41, 0.004, np.nan],
            "ci_high": [0.59, 0.057, np.nan],
            "call": ["AML_SUSPECTED", "NOT_SUSPECTED", "INSUFFICIENT_CELLS"],
            "qc_flags": ["", "high_quarantine_rate", ""],
        }
    )
    scoring = Store("/store").run("run-1").scoring("m1-abc")
    text = overview_markdown(patients, scoring, "m1", SummaryConfig(threshold=0.4, min_cells=50))
    lines = text.splitlines()
    assert (
        lines[0] == "# AML smear scoring: run run-1, scoring m1-abc"
        and f"**{RESEARCH_NOTE}**" in lines
    )
    assert "Model `m1`, threshold 0.4, blast cut-off 20%, minimum 50 scored cells." in lines
    assert {
        "| AML_SUSPECTED | 1 |",
        "| INDETERMINATE | 0 |",
        "| NOT_SUSPECTED | 1 |",
        "| INSUFFICIENT_CELLS | 1 |",
    } <= set(lines)
    assert "| A | 120 | 60 | 50.0% (41.0%-59.0%) | AML_SUSPECTED | - |" in lines
    assert "| B | 150 | 3 | 2.0% (0.4%-5.7%) | NOT_SUSPECTED | high_quarantine_rate |" in lines
    assert "| C | 0 | 0 | n/a | INSUFFICIENT_CELLS | - |" in lines
