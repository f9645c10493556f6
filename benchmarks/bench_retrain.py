"""Retraining wall time and test ROC AUC: cached-feature path vs plain per-epoch path, same data.

Both paths train the paper's 224x224 model (untrained backbone: no ImageNet weights offline)
on the same real LMU cells with the same split, epochs and seed. Each path is timed twice, in its
own store and on its own fresh cluster: a first run on an empty store and new workers (it ingests
the cells; the cached path also fills its feature cache), and a rerun on the same store and
workers (the cells already ingested, the cache full: the nightly case). Speed-ups compare like
with like: plain first run over cached first run
(both cold), plain rerun over cached rerun (both warm). The plain path runs the backbone every
epoch, the cached path only the head, so the ratio grows with the epochs: 20 fixed epochs (no
early stop), below the paper's 50, keep the plain runs to minutes.
The cached model is kept for the scoring benchmark's bfloat16 accuracy check.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

N_CELLS = int(os.environ.get("AML_SMEAR_BENCH_RETRAIN_CELLS", "400"))
EPOCHS = int(os.environ.get("AML_SMEAR_BENCH_RETRAIN_EPOCHS", "20"))
IMAGE_SIZE = int(os.environ.get("AML_SMEAR_BENCH_IMAGE_SIZE", "224"))
AUGMENT_VIEWS = 1
#: The timed runs: (name, training path); a path's second run reuses its first run's store.
RUNS = (
    ("cached_first", "cached"),
    ("cached_rerun", "cached"),
    ("plain_first", "plain"),
    ("plain_rerun", "plain"),
)


def _train(context: dict, names: tuple[str, ...]) -> dict:
    """Run the named runs of :data:`RUNS`; each training path on a fresh 2-worker cluster of its own.

    A path's first run thus starts on workers that have imported and loaded nothing, like the
    other path's first run; its rerun finds them warm, like the other's rerun. Returns per run
    the seconds of the flow (not the cluster's start), its test ROC AUC and the model's URL.
    """
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    from benchmarks.common import require_lmu_cells, sample_cohort
    from flows.parameters import RetrainOptions
    from flows.retrain import retrain_and_evaluate
    from flows.runner import local_cluster_kwargs

    work = Path(context["work"])
    source = work / "retrain-cohort"
    if not source.exists():
        sample_cohort(require_lmu_cells(), source, N_CELLS)
    common = dict(
        backbone_weights="none",
        epochs=EPOCHS,
        patience=EPOCHS,
        augment_views=AUGMENT_VIEWS,
        image_size=IMAGE_SIZE,
    )
    path_of = dict(RUNS)
    runs = {}
    for path in dict.fromkeys(path_of[name] for name in names):
        with LocalCluster(**local_cluster_kwargs(2)) as cluster:
            flow = retrain_and_evaluate.with_options(
                task_runner=DaskTaskRunner(address=cluster.scheduler_address)
            )
            for name in (n for n in names if path_of[n] == path):
                started = time.perf_counter()
                result = flow(
                    sources=[str(source)],
                    store=str(work / f"retrain-{path}"),
                    options=RetrainOptions(training_path=path, **common),
                )
                runs[name] = {
                    "seconds": time.perf_counter() - started,
                    "auc": result["metrics"]["roc_auc"],
                    "model": result["model"],
                }
    context["trained_model"] = runs[names[0]]["model"]
    context["retrain_cells"] = N_CELLS
    return runs


def trained_model(context: dict) -> str:
    """A model of the default recipe trained on real cells (the cached path), once per run.

    ``AML_SMEAR_BENCH_MODEL`` names a trained .keras file to use instead (the smoke test's); the
    scoring cohort then starts at the first LMU cell.
    """
    if "trained_model" not in context:
        if os.environ.get("AML_SMEAR_BENCH_MODEL"):
            context["trained_model"], context["retrain_cells"] = (
                os.environ["AML_SMEAR_BENCH_MODEL"],
                0,
            )
        else:
            _train(context, ("cached_first",))
    return context["trained_model"]


def main(context: dict) -> dict:
    from aml_model.config import DEFAULT_RECIPE
    from benchmarks.common import print_table, record

    runs = _train(context, tuple(name for name, _ in RUNS))
    first, rerun = runs["cached_first"], runs["cached_rerun"]
    plain, plain_rerun = runs["plain_first"], runs["plain_rerun"]
    results = {
        "retrain_recipe": DEFAULT_RECIPE,
        "retrain_cached_first_s": first["seconds"],
        "retrain_cached_rerun_s": rerun["seconds"],
        "retrain_plain_s": plain["seconds"],
        "retrain_plain_rerun_s": plain_rerun["seconds"],
        "cached_auc": rerun["auc"],
        "plain_auc": plain["auc"],
        # Warm over warm (cells ingested, cache full) and cold over cold (empty stores).
        "cached_over_plain_speedup": plain_rerun["seconds"] / rerun["seconds"],
        "cached_first_over_plain_speedup": plain["seconds"] / first["seconds"],
    }
    views = f"{AUGMENT_VIEWS} augmented view{'s' if AUGMENT_VIEWS != 1 else ''}"
    print_table(
        f"retraining the {DEFAULT_RECIPE} recipe on {N_CELLS} real LMU cells, {IMAGE_SIZE}x{IMAGE_SIZE}, "
        f"{EPOCHS} epochs, {views}",
        [
            (
                "cached path, first run (ingests, fills cache)",
                f"{first['seconds']:.0f} s, test AUC {first['auc']:.3f}",
            ),
            (
                "cached path, rerun (cache full)",
                f"{rerun['seconds']:.0f} s, test AUC {rerun['auc']:.3f}",
            ),
            (
                "plain path, first run (ingests; backbone every epoch)",
                f"{plain['seconds']:.0f} s, test AUC {plain['auc']:.3f}",
            ),
            (
                "plain path, rerun (cells ingested)",
                f"{plain_rerun['seconds']:.0f} s, test AUC {plain_rerun['auc']:.3f}",
            ),
            ("plain / cached, reruns (both warm)", f"{results['cached_over_plain_speedup']:.1f}x"),
            (
                "plain / cached, first runs (both cold)",
                f"{results['cached_first_over_plain_speedup']:.1f}x",
            ),
        ],
    )
    return record(results)
