"""Scale: ingest, retrain and score on 1x, 4x and 16x a base cohort of real cells.

Each factor runs in a fresh Python process (the flow process) against its own Dask cluster: a
``dask scheduler`` process and two single-threaded ``dask worker --no-nanny`` processes, so that
each process's peak RSS (``VmHWM``) and the scheduler's CPU time belong to that factor alone. The
cohort is the first ``AML_SMEAR_BENCH_SCALE_BASE`` real LMU cells (half blasts) copied ``factor``
times, each copy with one pixel changed so that every copy is a distinct image (sha256): ingest
decodes them all, retrain trains on all of them (the cache cannot reuse a copy), scoring scores
all of them. Patients are folders of ``base`` cells.

Per factor and stage (``ingest``, ``retrain``: embedding and training, its ingest already done;
``score``: the new champion with ``precision="auto"``, cells already ingested): wall seconds per
1,000 cells, Dask tasks per 1,000 cells (from the scheduler's task stream) and the scheduler's CPU
milliseconds per task; per factor the peak RSS of the flow process, the scheduler and the largest
worker. ``scale_16x_over_1x_*`` ratios show what grows with the cohort. infra/README.md ("Scale")
extrapolates a 1,000,000-cell nightly from them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

BASE = int(os.environ.get("AML_SMEAR_BENCH_SCALE_BASE", "64"))
FACTORS = tuple(
    int(f) for f in os.environ.get("AML_SMEAR_BENCH_SCALE_FACTORS", "1,4,16").split(",")
)
IMAGE_SIZE = int(os.environ.get("AML_SMEAR_BENCH_IMAGE_SIZE", "224"))
EPOCHS = 3
STAGES = ("ingest", "retrain", "score")
RESULT = "scale-result: "


def copied_cohort(lmu: Path, root: Path, factor: int) -> int:
    """``factor`` copies of the first BASE labelled LMU cells, each copy's pixels made distinct;
    patient folders of BASE cells and a labels.csv. Returns the number of cells."""
    import numpy as np
    from PIL import Image

    from benchmarks.common import lmu_rows

    blasts, normals = lmu_rows(lmu)
    rows = blasts[: BASE // 2] + normals[: BASE - BASE // 2]
    labels = ["image,label\n"]
    for copy in range(factor):
        patient = root / f"P{copy:03d}"
        patient.mkdir(parents=True, exist_ok=True)
        for row in rows:
            pixels = np.asarray(Image.open(lmu / row["file"]).convert("RGB")).copy()
            pixels[0, 0, 0] = (int(pixels[0, 0, 0]) + copy) % 256  # a distinct image per copy
            name = f"{Path(row['file']).stem}.png"
            Image.fromarray(pixels).save(patient / name)
            labels.append(f"P{copy:03d}/{name},{row['label']}\n")
    (root / "labels.csv").write_text("".join(labels))
    return len(rows) * factor


def dask_cluster(work: Path) -> tuple[subprocess.Popen, list[subprocess.Popen], Path]:
    """A scheduler process and two worker processes, each TensorFlow given one core's threads."""
    from flows.runner import local_cluster_kwargs

    dask = Path(sys.executable).with_name("dask")
    scheduler_file = work / "scheduler.json"
    env = {**os.environ, **local_cluster_kwargs(2)["env"]}
    scheduler = subprocess.Popen(
        [
            str(dask),
            "scheduler",
            "--scheduler-file",
            str(scheduler_file),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(600):
        if scheduler_file.exists():
            break
        time.sleep(0.1)
    workers = [
        subprocess.Popen(
            [
                str(dask),
                "worker",
                "--scheduler-file",
                str(scheduler_file),
                "--nthreads",
                "1",
                "--no-nanny",
                "--no-dashboard",
                "--memory-limit",
                "0",
                "--local-directory",
                str(work / f"worker-{i}"),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(2)
    ]
    return scheduler, workers, scheduler_file


def stop_cluster(scheduler: subprocess.Popen, workers: list[subprocess.Popen]) -> None:
    for process in (*workers, scheduler):
        process.terminate()
    for process in (*workers, scheduler):
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a worker still closing its TensorFlow session
            process.kill()
            process.wait()


def run_factor(factor: int, work: Path) -> dict:
    """Ingest, retrain and score ``factor`` x BASE cells on a fresh cluster; the figures of each stage."""
    import psutil
    from distributed import Client, get_task_stream
    from prefect_dask import DaskTaskRunner

    from benchmarks.common import peak_rss_mib, require_lmu_cells, reset_peak_rss
    from flows.ingest import ingest
    from flows.parameters import RetrainOptions, ScoreOptions
    from flows.retrain import retrain_and_evaluate
    from flows.runner import shared_prefect_api
    from flows.score import score_smears

    source, store = work / "cohort", str(work / "store")
    n_cells = copied_cohort(require_lmu_cells(), source, factor)
    reset_peak_rss()  # the flow's peak from here on, not the cohort's writing
    with shared_prefect_api():
        scheduler, workers, scheduler_file = dask_cluster(work)
        try:
            with Client(scheduler_file=str(scheduler_file)) as client:
                client.wait_for_workers(2, timeout=300)
                runner = DaskTaskRunner(address=client.scheduler.address)
                common = {"store": store, "image_size": IMAGE_SIZE}
                stages = {
                    "ingest": lambda: ingest.with_options(task_runner=runner)(
                        source=str(source), **common
                    ),
                    "retrain": lambda: retrain_and_evaluate.with_options(task_runner=runner)(
                        sources=[str(source)],
                        store=store,
                        options=RetrainOptions(
                            backbone_weights="none",
                            epochs=EPOCHS,
                            patience=EPOCHS,
                            augment_views=1,
                            image_size=IMAGE_SIZE,
                        ),
                    ),
                    "score": lambda: score_smears.with_options(task_runner=runner)(
                        source=str(source),
                        store=store,
                        options=ScoreOptions(model="champion", explain=False, min_cells=BASE // 2),
                    ),
                }
                figures = {}
                for stage, run in stages.items():
                    cpu_before = sum(psutil.Process(scheduler.pid).cpu_times()[:2])
                    started = time.perf_counter()
                    with get_task_stream(client) as stream:
                        run()
                    seconds = time.perf_counter() - started
                    tasks = len(stream.data)
                    cpu = sum(psutil.Process(scheduler.pid).cpu_times()[:2]) - cpu_before
                    figures[stage] = {
                        "s_per_kcell": seconds / n_cells * 1000,
                        "tasks_per_kcell": tasks / n_cells * 1000,
                        "scheduler_ms_per_task": cpu / max(tasks, 1) * 1000,
                        "tasks": tasks,
                        "seconds": seconds,
                    }
                peaks = {
                    "flow": peak_rss_mib(),
                    "scheduler": peak_rss_mib(scheduler.pid),
                    "worker": max(peak_rss_mib(w.pid) for w in workers),
                }
        finally:
            stop_cluster(scheduler, workers)
    return {"factor": factor, "cells": n_cells, "stages": figures, "peak_rss_mb": peaks}


def main(context: dict) -> dict:
    from benchmarks.common import print_table, record, run_fresh

    runs = {}
    for factor in FACTORS:
        work = Path(context["work"]) / f"scale-{factor}x"
        work.mkdir(parents=True)
        runs[factor] = run_fresh("benchmarks.bench_scale", [str(factor), str(work)], RESULT)
    results = {}
    for factor, run in runs.items():
        results[f"scale_{factor}x_cells"] = run["cells"]
        for stage, figures in run["stages"].items():
            for key in ("s_per_kcell", "tasks_per_kcell", "scheduler_ms_per_task"):
                results[f"scale_{factor}x_{stage}_{key}"] = figures[key]
        for process, peak in run["peak_rss_mb"].items():
            results[f"scale_{factor}x_peak_rss_mb_{process}"] = peak
    small, large = min(FACTORS), max(FACTORS)
    for stage in STAGES:
        results[f"scale_{large}x_over_{small}x_{stage}_s_per_cell"] = (
            results[f"scale_{large}x_{stage}_s_per_kcell"]
            / results[f"scale_{small}x_{stage}_s_per_kcell"]
        )
    for process in ("flow", "scheduler", "worker"):
        results[f"scale_{large}x_over_{small}x_peak_rss_{process}"] = (
            results[f"scale_{large}x_peak_rss_mb_{process}"]
            / results[f"scale_{small}x_peak_rss_mb_{process}"]
        )
    rows = []
    for factor, run in runs.items():
        for stage, f in run["stages"].items():
            rows.append(
                (
                    f"{factor}x ({run['cells']:,} cells) {stage}",
                    f"{f['s_per_kcell']:.1f} s/1k cells, {f['tasks_per_kcell']:.0f} tasks/1k cells, "
                    f"scheduler {f['scheduler_ms_per_task']:.1f} ms CPU/task",
                )
            )
        peaks = run["peak_rss_mb"]
        rows.append(
            (
                f"{factor}x peak RSS",
                f"flow {peaks['flow']:.0f}, scheduler {peaks['scheduler']:.0f}, "
                f"largest worker {peaks['worker']:.0f} MiB",
            )
        )
    rows += [
        (
            f"{large}x / {small}x {stage} time per cell",
            f"{results[f'scale_{large}x_over_{small}x_{stage}_s_per_cell']:.2f}x",
        )
        for stage in STAGES
    ]
    print_table(
        f"scale: ingest, retrain ({EPOCHS} epochs, 1 view) and score at {IMAGE_SIZE}x{IMAGE_SIZE}, "
        f"2 workers, base {BASE} cells",
        rows,
    )
    return record(results)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from flows.runner import quiet_dask_logs

    quiet_dask_logs()
    figures = run_factor(int(sys.argv[1]), Path(sys.argv[2]))
    print(RESULT + json.dumps(figures), flush=True)
