"""The benchmark runs end to end on a handful of cells and writes every key it promises.

Numbers are not checked: speed is measured by ``make bench``, never in the test suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT

# Each runs a whole benchmark script in a subprocess, given up to 900 s: longer than the suite's default.
pytestmark = pytest.mark.timeout(1800)

# The scoring benchmark's keys, with the tests' small trained model instead of one the benchmark
# trains itself; the retraining and memory benchmarks run more flows of the same kinds and are
# left to `make bench`.
REQUIRED = (
    "fp32_ceiling_cells_per_s",
    "model_only_over_ceiling",
    "model_only_cells_per_s",
    "baseline_cells_per_s",
    "e2e_1w_cells_per_s",
    "e2e_2w_cells_per_s",
    "e2e_over_model_only",
    "e2e_over_baseline",
    "bf16_over_fp32",
    "bf16_max_abs_dp",
    "bf16_auc_delta",
    "bf16_patient_calls_changed",
    "workers2_over_1",
    "bf16_over_folded_fp32",
    "baseline_warm_cells_per_s",
    "e2e_over_baseline_warm",
    "e2e_auto_2w_cells_per_s",
    "e2e_auto_over_fp32_2w",
    "fp32_gemm_ceiling_cells_per_s",
    "bf16_gemm_ceiling_cells_per_s",
    "model_only_bf16_over_bf16_gemm_ceiling",
    "model_only_cpu_ms_per_cell",
    "e2e_1w_cpu_ms_per_cell",
    "e2e_2w_cpu_ms_per_cell",
    "e2e_auto_2w_cpu_ms_per_cell",
    "e2e_cpu_bound_over_model_only",
    "e2e_bf16_cpu_bound_over_model_only_bf16",
)


@pytest.mark.slow
@pytest.mark.benchmark_smoke
def test_benchmarks_run_on_a_handful_of_cells(lmu_cells, tiny_model_file, tmp_path):
    results = tmp_path / "latest.json"
    env = {
        **os.environ,
        "AML_SMEAR_LMU_CELLS": str(lmu_cells),
        "AML_SMEAR_BENCH_RESULTS": str(results),
        "AML_SMEAR_BENCH_CELLS": "16",
        "AML_SMEAR_BENCH_MODEL": str(tiny_model_file),
    }
    env.pop("PREFECT_API_URL", None)  # the benchmark starts its own temporary Prefect server
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "score"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    recorded = json.loads(results.read_text())
    missing = [key for key in REQUIRED if not isinstance(recorded.get(key), int | float)]
    assert not missing, f"keys missing or not numbers: {missing}"
    assert recorded["machine"]["cpus"] == os.cpu_count()
    # A warm run is held to its cores over its CPU a cell: the bound counts every process it used.
    assert recorded["e2e_over_model_only"] <= recorded["e2e_cpu_bound_over_model_only"]
    assert "cores always busy" in completed.stdout
    assert "fp32 ceiling" in completed.stdout and "bf16 patient calls changed" in completed.stdout
    # Both bf16 ratios are printed: over the same folded graph in fp32 (fair) and over the stock one.
    assert "bf16 / folded fp32 (same graph, the fair ratio)" in completed.stdout
    assert "bf16 / stock fp32" in completed.stdout
    # The tests' model is a bare .keras file, without the card that would let auto reduce it,
    # or name its recipe.
    assert (
        recorded["score_recipe"] == "unrecorded" and "trained unrecorded model" in completed.stdout
    )
    assert recorded["auto_precision"] == "float32"
    assert (
        "not recorded for this model" in recorded["auto_precision_reason"]
        or "no native reduced precision" in recorded["auto_precision_reason"]
    )


@pytest.mark.slow
def test_the_pretraining_benchmark_writes_its_rates_and_ratios(lmu_cells, tmp_path):
    results = tmp_path / "latest.json"
    env = {
        **os.environ,
        "AML_SMEAR_LMU_CELLS": str(lmu_cells),
        "AML_SMEAR_BENCH_RESULTS": str(results),
        "AML_SMEAR_BENCH_IMAGE_SIZE": "64",
        "AML_SMEAR_BENCH_PRETRAIN_STEPS": "2",
    }
    env.pop("PREFECT_API_URL", None)
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "pretrain"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    recorded = json.loads(results.read_text())
    rates = (
        "pretrain_cells_per_s",
        "pretrain_forward_224_cells_per_s",
        "pretrain_forward_views_cells_per_s",
    )
    assert all(recorded[key] > 0 for key in rates)
    assert recorded["pretrain_over_forward_224"] == recorded[rates[0]] / recorded[rates[1]]
    assert "pretraining / forward (whole cells)" in completed.stdout
