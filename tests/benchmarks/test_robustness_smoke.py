"""The robustness benchmark runs end to end on a few real cells of both labs and writes its figures.

The figures themselves come from the full-size run (benchmarks/README.md, "Robustness").
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT

# Each runs a whole benchmark script in a subprocess, given up to 900 s: longer than the suite's default.
pytestmark = pytest.mark.timeout(1800)

MOVED = {
    "lmu_blasts_as_pbc_reinhard",
    "lmu_blasts_as_pbc_histogram",
    "lmu_blasts_colour_only_histogram",
    "lmu_blasts_scale_only",
    "lmu_blasts_optics_only",
    "lmu_blasts_as_pbc_full_histogram",
    "lmu_blasts_as_pbc_full_reinhard",
    "pbc_as_lmu_reinhard",
    "pbc_as_lmu_histogram",
    "pbc_as_lmu_full_histogram",
    "pbc_as_lmu_full_reinhard",
}


@pytest.mark.slow
@pytest.mark.benchmark_smoke
def test_robustness_benchmark_reports_every_group(lmu_cells, pbc_cells, tmp_path):
    import keras

    from aml_model.architecture import seed_weights
    from aml_model.weights import save_partial_weights

    # A backbone file of the robust recipe's stages only: the paper recipe, which reads the last stage, is skipped.
    weights = tmp_path / "b.h5"
    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    save_partial_weights(seed_weights(backbone, 5), "conv3_block4_out", weights)
    output, results = tmp_path / "robustness.json", tmp_path / "latest.json"
    env = {
        **os.environ,
        "AML_SMEAR_LMU_CELLS": str(lmu_cells),
        "AML_SMEAR_PBC_CELLS": str(pbc_cells),
        "AML_SMEAR_BENCH_RESULTS": str(results),
    }
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_robustness",
            "--image-size",
            "32",
            "--limit",
            "30",
            "--epochs",
            "2",
            "--robust-seeds",
            "0",
            "1",
            "--backbone-weights",
            "none",
            str(weights),
            "--site-pretrain",
            str(weights),
            "--site-steps",
            "2",
            "--output",
            str(output),
        ],
        check=False,
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    payload = json.loads(output.read_text())
    # The site's backbone: the file continued on the site's own cells, written beside the results.
    site = tmp_path / "site-b.h5"
    assert site.stat().st_size > 0 and "site backbone" in completed.stdout
    assert [(r["recipe"], r["backbone"], r["seed"]) for r in payload["runs"]] == [
        ("paper", "none", 0),
        ("robust", "none", 0),
        ("robust", "none", 1),
        ("robust", str(weights), 0),
        ("robust", str(weights), 1),
        ("robust", str(site), 0),
        ("robust", str(site), 1),
    ]
    assert payload["skipped"] == ["paper@b", "paper@site-b"]
    assert list(payload["summary"]) == ["paper", "robust", "robust@b", "robust@site-b"]
    robust = payload["summary"]["robust"]
    assert set(robust["pbc_blast_like_by_type"]) == {
        "basophil",
        "eosinophil",
        "erythroblast",
        "monocyte",
        "segmented neutrophil",
        "typical lymphocyte",
    }
    assert set(robust["moved_blast_like"]) == MOVED
    assert len(robust["val_auc"]) == 2 and all(0 <= v <= 1 for v in robust["val_auc"])
    # The cross-lab ranking AUCs: every moved set, and the blasts unmoved; the headline with its spread over seeds.
    for summary in payload["summary"].values():
        assert set(summary["cross_lab_auc"]) == MOVED | {"unmoved"}
        assert all(
            0 <= s["min"] <= s["mean"] <= s["max"] <= 1 for s in summary["cross_lab_auc"].values()
        )
        assert (
            summary["cross_lab_auc_full"]
            == summary["cross_lab_auc"]["lmu_blasts_as_pbc_full_histogram"]["mean"]
        )
        assert (
            summary["cross_lab_auc_full_min"]
            <= summary["cross_lab_auc_full"]
            <= summary["cross_lab_auc_full_max"]
        )
        assert summary["cross_lab_auc_full_std"] >= 0
    # Each lab's look, measured on training neutrophils, and the moves fitted to it.
    look = payload["look"]
    for lab in ("lmu", "pbc"):
        assert set(look[lab]) == {"blur_effect", "noise", "nucleus_diameter", "nucleus_offset"}
        assert all(math.isfinite(v) for v in look[lab].values())
        assert (
            0 <= look[lab]["blur_effect"] <= 1
            and look[lab]["noise"] >= 0
            and look[lab]["nucleus_diameter"] > 0
        )
    assert all(
        math.isfinite(v)
        for move in look["framing"].values()
        for v in (move["scale"], move["centring"], *move["after"].values())
    )
    assert set(look["optics"]) == {m for m in MOVED if "full" in m}
    for move in look["optics"].values():
        assert move["blur_sigma"] >= 0 and move["noise"] >= 0
        assert all(math.isfinite(v) for v in (*move["before"].values(), *move["after"].values()))
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
    assert recorded["robustness_robust_cross_lab_auc_full"] == robust["cross_lab_auc_full"]
    assert (
        recorded["robustness_robust@b_cross_lab_auc_full_std"]
        == payload["summary"]["robust@b"]["cross_lab_auc_full_std"]
    )
    # The headline heads each recipe's table.
    table = completed.stdout.split("\nrobust@b (seeds [0, 1])\n")[1].splitlines()
    assert (
        table[0]
        .strip()
        .startswith("cross-lab ROC AUC, lmu_blasts_as_pbc_full_histogram vs. all PBC cells")
    )
    assert "LMU hold-out ROC AUC / accuracy" in completed.stdout
