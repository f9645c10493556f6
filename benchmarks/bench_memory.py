"""Peak resident memory while scoring and while retraining: it should not grow with the cells.

Scoring: each size (500 and 5,000 cells) runs ``score-smears`` on a fresh 2-worker LocalCluster
and reads every worker's own peak RSS (``VmHWM``) before the cluster closes. 5,000 cells are more
than the 1,400 real ones, so the real cells are dealt to patient folders repeatedly (a patient
never gets the same cell twice, which ingest would quarantine as a duplicate). The model is the
paper architecture at a smaller input (default 96 px, untrained backbone) to keep the run to
minutes: memory that grows with the cohort would show at any input size.

Retraining: ``retrain-and-evaluate`` (cached path, cold cache) on 1x and 8x a base cohort of real
cells at the real input size (224 px, untrained backbone, 7 augmented views per training cell),
each in a fresh process with its own 2-worker LocalCluster: the peak RSS of every process (the
flow process, which trains the head, and each worker, which embeds) is read when the run ends.
At 224 px a cached row is 7x7x2048 float16 (196 KiB), so 8x the rows held in memory would show
as hundreds of MiB. The same run measures what float16 rows cost the head: two heads trained
with one seed on float32 and float16-rounded features of the 8x cohort, their test predictions
compared.

``AML_SMEAR_BENCH_MEMORY_PARTS`` (default ``score,retrain``) picks the parts.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

SIZES = tuple(int(n) for n in os.environ.get("AML_SMEAR_BENCH_MEMORY_CELLS", "500,5000").split(","))
IMAGE_SIZE = int(os.environ.get("AML_SMEAR_BENCH_MEMORY_IMAGE_SIZE", "96"))
CELLS_PER_PATIENT = 500
PARTS = tuple(os.environ.get("AML_SMEAR_BENCH_MEMORY_PARTS", "score,retrain").split(","))
RETRAIN_CELLS = int(os.environ.get("AML_SMEAR_BENCH_MEMORY_RETRAIN_CELLS", "50"))
RETRAIN_SCALES = (1, 8)
RETRAIN_VIEWS = int(os.environ.get("AML_SMEAR_BENCH_MEMORY_RETRAIN_VIEWS", "7"))
RETRAIN_IMAGE_SIZE = int(os.environ.get("AML_SMEAR_BENCH_MEMORY_RETRAIN_IMAGE_SIZE", "224"))
RETRAIN_EPOCHS = 3
RESULT = "retrain-peaks: "


def repeated_cohort(lmu: Path, root: Path, n_cells: int) -> None:
    """n_cells real cells in patient folders of CELLS_PER_PATIENT, cycling through the LMU cells."""
    from benchmarks.common import lmu_rows

    blasts, normals = lmu_rows(lmu)
    rows = [row for pair in zip(blasts, normals, strict=False) for row in pair]
    for number in range(n_cells):
        row = rows[number % len(rows)]
        patient = root / f"P{number // CELLS_PER_PATIENT:02d}"
        patient.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lmu / row["file"], patient / Path(row["file"]).name)


def _worker_peak_rss_mb() -> float:
    """This worker's own peak RSS, MiB (not ``ru_maxrss``: :func:`benchmarks.common.peak_rss_mib`)."""
    from benchmarks.common import peak_rss_mib

    return peak_rss_mib()


def peak_rss_mb(source: Path, store: Path, model_file: str) -> float:
    """The largest worker peak RSS (MiB) of one score-smears run on a fresh 2-worker cluster."""
    from distributed import Client, LocalCluster
    from prefect_dask import DaskTaskRunner

    from flows.parameters import ScoreOptions
    from flows.runner import local_cluster_kwargs
    from flows.score import score_smears

    with LocalCluster(**local_cluster_kwargs(2)) as cluster, Client(cluster) as client:
        runner = DaskTaskRunner(address=cluster.scheduler_address)
        score_smears.with_options(task_runner=runner)(
            source=str(source),
            store=str(store),
            options=ScoreOptions(model=model_file, explain=False),
        )
        return max(client.run(_worker_peak_rss_mb).values())


def retrain_peaks(source: Path, store: Path) -> dict:
    """Run one cold retrain on a fresh 2-worker cluster in this process; the peak RSS (MiB) of
    this (the flow) process and of each worker, and the number of cached rows."""
    from distributed import Client, LocalCluster
    from prefect_dask import DaskTaskRunner

    from benchmarks.common import peak_rss_mib, reset_peak_rss
    from flows.parameters import RetrainOptions
    from flows.retrain import retrain_and_evaluate
    from flows.runner import local_cluster_kwargs

    reset_peak_rss()
    with LocalCluster(**local_cluster_kwargs(2)) as cluster, Client(cluster) as client:
        flow = retrain_and_evaluate.with_options(
            task_runner=DaskTaskRunner(address=cluster.scheduler_address)
        )
        result = flow(
            sources=[str(source)],
            store=str(store),
            options=RetrainOptions(
                backbone_weights="none",
                epochs=RETRAIN_EPOCHS,
                patience=RETRAIN_EPOCHS,
                image_size=RETRAIN_IMAGE_SIZE,
                augment_views=RETRAIN_VIEWS,
            ),
        )
        workers = sorted(client.run(_worker_peak_rss_mb).values())
    flow_peak = peak_rss_mib()
    return {
        "flow": flow_peak,
        "workers": workers,
        "rows": result["embedded"],
        "seconds": result["seconds"],
    }


def _fresh_process_peaks(source: Path, store: Path) -> dict:
    """:func:`retrain_peaks` in a new Python process: ``ru_maxrss`` never goes down, so each
    size needs a process of its own."""
    import json
    import subprocess
    import sys

    from benchmarks.common import PROJECT_ROOT

    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_memory", str(source), str(store)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise SystemExit(f"retrain memory run failed:\n{completed.stderr[-3000:]}")
    return json.loads(
        next(line for line in completed.stdout.splitlines()[::-1] if line.startswith(RESULT))[
            len(RESULT) :
        ]
    )


def fp16_feature_tolerance(store: Path, seed: int = 0) -> dict:
    """Heads trained with one seed on float32 and on float16-rounded backbone features of the
    store's labelled cells (the cells as they are, a seeded split by cell): max |dp| of their
    test predictions."""
    import dataclasses

    from aml_model.architecture import build_backbone, build_head, seed_weights
    from aml_model.config import ExperimentConfig, ModelConfig, TrainConfig
    from aml_model.inference import fold_batch_norm
    from aml_model.preprocess import normalise_for_resnet50
    from aml_model.split import split_indices
    from aml_model.train import train_head
    from tasks.store import Store
    from tasks.training import load_cells, load_training_set

    run = next(path for path in (store / "runs").iterdir() if (path / "cells.parquet").exists())
    run_store = Store(str(store))
    data = load_training_set([run_store.run(run.name)])
    config = ExperimentConfig(
        model=ModelConfig(image_size=RETRAIN_IMAGE_SIZE, backbone_weights="none"),
        train=TrainConfig(epochs=10, early_stopping_patience=10, seed=seed),
    )
    fractions = (config.train.train_fraction, config.train.val_fraction, config.train.test_fraction)
    split = split_indices(data.y, None, fractions, seed, strata=data.y)
    weights = next((store / "features").glob("*.weights.h5"))
    backbone = fold_batch_norm(
        build_backbone(dataclasses.replace(config.model, backbone_weights=str(weights)))
    )
    images = normalise_for_resnet50(load_cells(data.cells, run_store).astype("float32"))
    features32 = backbone.predict(images, batch_size=32, verbose=0)
    predictions = {}
    for name, features in (("float32", features32), ("float16", features32.astype("float16"))):
        head = seed_weights(build_head(features.shape[1:], config.model), seed)
        train_head(
            head,
            features[split["train"]],
            data.y[split["train"]],
            features[split["val"]],
            data.y[split["val"]],
            config.train,
        )
        predictions[name] = head.predict(
            features[split["test"]].astype("float32"), verbose=0
        ).reshape(-1)
    return {
        "max_abs_dp": float(abs(predictions["float32"] - predictions["float16"]).max()),
        "test_cells": len(split["test"]),
        "train_cells": len(split["train"]),
    }


def retrain_main(context: dict) -> dict:
    from benchmarks.common import print_table, record, require_lmu_cells, sample_cohort

    lmu = require_lmu_cells()
    work = Path(context["work"])
    runs = {}
    for scale in RETRAIN_SCALES:
        source = work / f"retrain-memory-cohort-{scale}x"
        sample_cohort(lmu, source, RETRAIN_CELLS * scale)
        runs[scale] = _fresh_process_peaks(source, work / f"retrain-memory-store-{scale}x")
    peak = {scale: max(run["flow"], *run["workers"]) for scale, run in runs.items()}
    small, large = RETRAIN_SCALES
    tolerance = fp16_feature_tolerance(work / f"retrain-memory-store-{large}x")
    results = {f"retrain_peak_rss_mb_{scale}x": peak[scale] for scale in RETRAIN_SCALES}
    results.update(
        {f"retrain_cached_rows_{scale}x": runs[scale]["rows"] for scale in RETRAIN_SCALES}
    )
    results[f"retrain_peak_rss_{large}x_over_{small}x"] = peak[large] / peak[small]
    results["retrain_fp16_features_max_abs_dp"] = tolerance["max_abs_dp"]
    print_table(
        f"peak RSS while retraining (cached path, cold cache), {RETRAIN_IMAGE_SIZE}x{RETRAIN_IMAGE_SIZE}, "
        f"{RETRAIN_VIEWS} augmented views, {RETRAIN_EPOCHS} epochs, 2 workers",
        [
            *(
                (
                    f"{scale}x: {RETRAIN_CELLS * scale:,} cells, {run['rows']:,} cached rows",
                    f"flow {run['flow']:.0f} MiB, workers {', '.join(f'{w:.0f}' for w in run['workers'])} MiB, "
                    f"{run['seconds']:.0f} s",
                )
                for scale, run in runs.items()
            ),
            (f"{large}x / {small}x (largest process)", f"{peak[large] / peak[small]:.2f}x"),
            (
                f"float16 vs float32 features, max |dp| on {tolerance['test_cells']} test cells",
                f"{tolerance['max_abs_dp']:.4f}",
            ),
        ],
    )
    return record(results)


def score_main(context: dict) -> dict:
    import keras

    from aml_model.architecture import build_model
    from aml_model.config import ModelConfig
    from benchmarks.common import print_table, record, require_lmu_cells

    lmu = require_lmu_cells()
    work = Path(context["work"])
    keras.utils.set_random_seed(0)
    model_file = str(work / f"memory-{IMAGE_SIZE}.keras")
    build_model(ModelConfig(image_size=IMAGE_SIZE, backbone_weights="none")).save(model_file)
    peaks = {}
    for n_cells in SIZES:
        source = work / f"memory-cohort-{n_cells}"
        repeated_cohort(lmu, source, n_cells)
        peaks[n_cells] = peak_rss_mb(source, work / f"memory-store-{n_cells}", model_file)
    small, large = min(SIZES), max(SIZES)
    results = {f"peak_rss_mb_{n}": peak for n, peak in peaks.items()}
    results["peak_rss_large_over_small"] = peaks[large] / peaks[small]
    print_table(
        f"peak RSS per worker, score-smears, {IMAGE_SIZE}x{IMAGE_SIZE} model, 2 workers",
        [
            *((f"{n:,} cells", f"{peak:.0f} MiB") for n, peak in peaks.items()),
            (f"{large:,} / {small:,}", f"{peaks[large] / peaks[small]:.2f}x"),
        ],
    )
    return record(results)


def main(context: dict) -> dict:
    results = {}
    if "score" in PARTS:
        results = score_main(context)
    if "retrain" in PARTS:
        results = retrain_main(context)
    return results


if __name__ == "__main__":
    import json
    import sys

    print(RESULT + json.dumps(retrain_peaks(Path(sys.argv[1]), Path(sys.argv[2]))))
