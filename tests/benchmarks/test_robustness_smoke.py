"""The robustness benchmark runs end to end on a few real cells of both labs and writes its figures.

The figures themselves come from the full-size run (benchmarks/README.md, "Robustness").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT


@pytest.mark.slow
def test_robustness_benchmark_reports_every_group(lmu_cells, pbc_cells, tmp_path):
    output, results = tmp_path / "robustness.json", tmp_path / "latest.json"
    env = {**os.environ, "AML_SMEAR_LMU_CELLS": str(lmu_cells), "AML_SMEAR_PBC_CELLS": str(pbc_cells),
           "AML_SMEAR_BENCH_RESULTS": str(results)}
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_robustness", "--image-size", "32", "--limit", "30", "--epochs", "2",
         "--robust-seeds", "0", "1", "--output", str(output)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    payload = json.loads(output.read_text())
    assert [(r["recipe"], r["seed"]) for r in payload["runs"]] == [("paper", 0), ("robust", 0), ("robust", 1)]
    robust = payload["summary"]["robust"]
    assert set(robust["pbc_blast_like_by_type"]) == {"basophil", "eosinophil", "erythroblast", "monocyte",
                                                     "segmented neutrophil", "typical lymphocyte"}
    assert {"lmu_blasts_as_pbc_reinhard", "pbc_as_lmu_reinhard"} <= set(robust["moved_blast_like"])
    assert len(robust["val_auc"]) == 2 and all(0 <= v <= 1 for v in robust["val_auc"])
    # 30 cells of each class and source: 10% of them held out, moved into the other lab's look.
    assert payload["split_sizes"]["test"] == 24
    # Every run names its misclassified held-out LMU cells, the most confident first.
    for run in payload["runs"]:
        misses = [abs(e["probability"] - (e["label"] == "blast")) for e in run["lmu_errors"]]
        assert all(e["file"].startswith(("MYO/", "NGS/")) for e in run["lmu_errors"])
        assert all(m >= 0.5 for m in misses) and misses == sorted(misses, reverse=True)
        n_wrong = round((1 - run["lmu_accuracy"]) * 6)
        assert len(run["lmu_errors"]) == min(n_wrong, 5)
    low, high = payload["runs"][0]["lmu_auc_ci95"]
    assert 0 <= low <= payload["runs"][0]["lmu_auc"] <= high <= 1
    recorded = json.loads(results.read_text())
    assert recorded["robustness_robust_collapsed"] == robust["collapsed"]
    assert "LMU hold-out ROC AUC / accuracy" in completed.stdout
