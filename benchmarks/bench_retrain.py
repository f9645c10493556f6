"""Retraining wall time and test ROC AUC: cached-feature path vs plain per-epoch path, same data.

Both paths train the paper's 224x224 model (untrained backbone: no ImageNet weights offline)
on the same real LMU cells with the same split, epochs and seed. The cached path is timed twice:
a first run that fills the feature cache, and a rerun that finds it full (the nightly case).
The plain path runs the backbone every epoch, so the epochs are few to keep it under minutes.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

N_CELLS = int(os.environ.get("AML_SMEAR_BENCH_RETRAIN_CELLS", "400"))
EPOCHS = int(os.environ.get("AML_SMEAR_BENCH_RETRAIN_EPOCHS", "4"))


def main() -> dict:
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    from benchmarks.bench_score import sample_cohort
    from benchmarks.common import print_table, record, require_lmu_cells
    from flows.retrain import retrain_and_evaluate
    from flows.runner import local_cluster_kwargs, quiet_dask_logs, shared_prefect_api

    lmu = require_lmu_cells()
    quiet_dask_logs()
    timings, aucs = {}, {}
    with tempfile.TemporaryDirectory() as work, shared_prefect_api(), LocalCluster(**local_cluster_kwargs(2)) as cluster:
        source = Path(work) / "cohort"
        sample_cohort(lmu, source, N_CELLS)
        runner = DaskTaskRunner(address=cluster.scheduler_address)
        flow = retrain_and_evaluate.with_options(task_runner=runner)
        common = dict(sources=[str(source)], backbone_weights="none", epochs=EPOCHS, patience=EPOCHS,
                      augment_views=1)
        for name, store, path in (("cached_first", "a", "cached"), ("cached_rerun", "a", "cached"),
                                  ("plain", "b", "plain")):
            started = time.perf_counter()
            result = flow(store=str(Path(work) / store), training_path=path, **common)
            timings[name], aucs[name] = time.perf_counter() - started, result["metrics"]["roc_auc"]
    results = {
        "retrain_cached_first_s": timings["cached_first"], "retrain_cached_rerun_s": timings["cached_rerun"],
        "retrain_plain_s": timings["plain"], "retrain_cached_auc": aucs["cached_first"],
        "retrain_plain_auc": aucs["plain"], "retrain_plain_over_cached_rerun": timings["plain"] / timings["cached_rerun"],
    }
    print_table(f"retraining on {N_CELLS} real LMU cells, 224x224, {EPOCHS} epochs, 1 augmented view", [
        ("cached path, first run (fills cache)", f"{timings['cached_first']:.0f} s, test AUC {aucs['cached_first']:.3f}"),
        ("cached path, rerun (cache full)", f"{timings['cached_rerun']:.0f} s, test AUC {aucs['cached_rerun']:.3f}"),
        ("plain path (backbone every epoch)", f"{timings['plain']:.0f} s, test AUC {aucs['plain']:.3f}"),
        ("plain / cached rerun", f"{timings['plain'] / timings['cached_rerun']:.1f}x"),
    ])
    record(results)
    return results
