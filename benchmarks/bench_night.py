"""A big night's shape on this machine: ingest and score (with the tables' aggregation) of cohorts
of tiny generated cells, 1x, 10x and 100x a base cohort, on a real scheduler and two workers.

Each cohort runs in a fresh Python process (the flow process) with its own ``dask scheduler`` and
two single-threaded ``dask worker --no-nanny`` processes (:func:`benchmarks.bench_scale.dask_cluster`),
so that every peak RSS (``VmHWM``, reset in the flow process before its first flow run) belongs to
one process and one cohort; the cohort is written by the benchmark's own process and the Dask
tasks are counted on the scheduler by a plugin that keeps one integer, so that none of the
benchmark's bookkeeping is in the flow's peak, nor a record per task in the scheduler's.
The cells are ``AML_SMEAR_BENCH_NIGHT_SIZE`` px (default 32) PNGs drawn from a seeded generator,
every one distinct, in patient folders of ``CELLS_PER_PATIENT``; the model is the default recipe
(robust) at that size with an untrained backbone: the figures are of the
pipeline's orchestration, not of a model's accuracy.

Keys ``scale_night_<factor>x_*``: cells; per stage (``ingest``, ``score``) wall seconds per 1,000
cells, Prefect task runs and Dask tasks per 1,000 cells; peak RSS of the flow process, the scheduler
and the largest worker; and top over base ratios (``scale_flow_peak_rss_mb`` and the others the
issue names). docs/performance.md and infra/README.md ("Scale") read them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

BASE = int(os.environ.get("AML_SMEAR_BENCH_NIGHT_BASE", "2000"))
FACTORS = tuple(
    int(f) for f in os.environ.get("AML_SMEAR_BENCH_NIGHT_FACTORS", "1,10,100").split(",")
)
IMAGE_SIZE = int(os.environ.get("AML_SMEAR_BENCH_NIGHT_SIZE", "32"))
CELLS_PER_PATIENT = 200
STAGES = ("ingest", "score")
PROCESSES = ("flow", "scheduler", "worker")
RESULT = "night-result: "


def tiny_cohort(root: Path, n_cells: int, seed: int = 0) -> None:
    """``n_cells`` distinct IMAGE_SIZE px RGB PNGs, patient folders of CELLS_PER_PATIENT."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for number in range(n_cells):
        patient = root / f"N{number // CELLS_PER_PATIENT:05d}"
        if number % CELLS_PER_PATIENT == 0:
            patient.mkdir(parents=True)
        pixels = base.copy()
        # The cell's number in its first pixels: every image, and so every sha256, is distinct.
        pixels[0, :4, 0] = np.frombuffer(number.to_bytes(4, "little"), np.uint8)
        pixels[1:, :, :] = np.roll(base[1:], number % IMAGE_SIZE, axis=1)
        Image.fromarray(pixels).save(patient / f"{number:07d}.png", compress_level=1)


def tiny_model(path: Path, image_size: int = IMAGE_SIZE) -> dict:
    """Save the default recipe at ``image_size`` px, backbone untrained, to ``path``; returns its
    configuration. Built in the benchmark's process, so that no flow process imports TensorFlow
    (a flow never does) and its peak is the flow's own."""
    from aml_model.architecture import build_model
    from aml_model.config import DEFAULT_RECIPE, ExperimentConfig, ModelConfig
    from aml_model.io import save_model

    config = ExperimentConfig.for_recipe(
        DEFAULT_RECIPE, ModelConfig(image_size=image_size, backbone_weights="none")
    )
    save_model(build_model(config.model), path)
    return config.to_dict()


def register_champion(store: str, model: Path, config: dict) -> None:
    from tasks.registry import register_model, set_champion
    from tasks.store import Store

    registry = Store(store)
    set_champion(registry, register_model(str(model), {"config": config}, registry).version)


def _prefect_task_runs(flow_run_id) -> int:
    """How many task runs the Prefect API recorded for a flow run (its subflows' not included)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs, page = 0, 200
    with get_client(sync_client=True) as client:
        while True:
            read = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                limit=page,
                offset=runs,
            )
            runs += len(read)
            if len(read) < page:
                return runs


_TASK_COUNTER = "aml-smear-bench-task-counter"


def _task_counter():
    """A scheduler plugin that counts the tasks the scheduler sees finish: one integer.

    Not a task stream: its buffer keeps a record of every task, up to 100,000, in the scheduler
    whose peak memory this benchmark measures, and counts no further. A production scheduler
    without the dashboard keeps none.
    """
    from distributed.diagnostics.plugin import SchedulerPlugin

    class TaskCounter(SchedulerPlugin):
        name = _TASK_COUNTER

        def __init__(self) -> None:
            self.finished = 0

        def transition(self, key, start, finish, *args, **kwargs) -> None:
            if finish == "memory":
                self.finished += 1

    return TaskCounter()


def _tasks_finished(dask_scheduler) -> int:
    return dask_scheduler.plugins[_TASK_COUNTER].finished


def run_factor(factor: int, work: Path, model: Path) -> dict:
    """Ingest and score ``factor`` x BASE tiny cells (written by :func:`main` in ``work``/cohort)
    with ``model`` (:func:`tiny_model`) on a fresh cluster; the figures of each stage."""
    from distributed import Client
    from prefect_dask import DaskTaskRunner

    from benchmarks.bench_scale import dask_cluster, stop_cluster
    from benchmarks.common import current_rss_mib, peak_rss_mib, reset_peak_rss
    from flows.ingest import ingest
    from flows.parameters import ScoreOptions
    from flows.runner import shared_prefect_api
    from flows.score import score_smears

    source, store = work / "cohort", str(work / "store")
    n_cells = BASE * factor
    config = json.loads(model.with_suffix(".json").read_text())
    register_champion(store, model, config)
    reset_peak_rss()  # the flow's peak from here on
    with shared_prefect_api():
        scheduler, workers, scheduler_file = dask_cluster(work)
        try:
            with Client(scheduler_file=str(scheduler_file)) as client:
                client.wait_for_workers(2, timeout=300)
                client.register_plugin(_task_counter())
                runner = DaskTaskRunner(address=client.scheduler.address)
                stages = {
                    "ingest": lambda: ingest.with_options(task_runner=runner)(
                        source=str(source), store=store, image_size=IMAGE_SIZE, return_state=True
                    ),
                    "score": lambda: score_smears.with_options(task_runner=runner)(
                        source=str(source),
                        store=store,
                        options=ScoreOptions(explain=False),
                        return_state=True,
                    ),
                }
                figures = {}
                for stage, run in stages.items():
                    before = client.run_on_scheduler(_tasks_finished)
                    started = time.perf_counter()
                    state = run()
                    seconds = time.perf_counter() - started
                    state.result()  # a failed stage fails the benchmark
                    tasks = client.run_on_scheduler(_tasks_finished) - before
                    figures[stage] = {
                        "s_per_kcell": seconds / n_cells * 1000,
                        "dask_tasks_per_kcell": tasks / n_cells * 1000,
                        "prefect_task_runs": _prefect_task_runs(state.state_details.flow_run_id),
                        "seconds": seconds,
                        # Where the flow's memory goes: what it still holds after the stage, and
                        # its peak so far.
                        "flow_rss_mb_after": current_rss_mib(),
                        "flow_peak_rss_mb_after": peak_rss_mib(),
                    }
                    figures[stage]["prefect_task_runs_per_kcell"] = (
                        figures[stage]["prefect_task_runs"] / n_cells * 1000
                    )
                peaks = {
                    "flow": peak_rss_mib(),
                    "scheduler": peak_rss_mib(scheduler.pid),
                    "worker": max(peak_rss_mib(w.pid) for w in workers),
                }
        finally:
            stop_cluster(scheduler, workers)
    return {
        "factor": factor,
        "cells": n_cells,
        "recipe": config["recipe"],
        "stages": figures,
        "peak_rss_mb": peaks,
    }


def main(context: dict) -> dict:
    from benchmarks.common import print_table, record, run_fresh

    model = Path(context["work"]) / "night-model.keras"
    model.with_suffix(".json").write_text(json.dumps(tiny_model(model)))
    runs = {}
    for factor in FACTORS:
        work = Path(context["work"]) / f"night-{factor}x"
        work.mkdir(parents=True)
        # Written here, not in the flow's process: its peak is the flow's own.
        tiny_cohort(work / "cohort", BASE * factor)
        runs[factor] = run_fresh(
            "benchmarks.bench_night", [str(factor), str(work), str(model)], RESULT
        )
    # The scale benchmark's largest cohort (real 224 px cells), in this run, for the issue's
    # "no worse per cell than the 16x figure on the same machine".
    from benchmarks import bench_scale

    scale_factor = max(bench_scale.FACTORS)
    scale_work = Path(context["work"]) / f"scale-{scale_factor}x"
    scale_work.mkdir(parents=True)
    scale = run_fresh(
        "benchmarks.bench_scale", [str(scale_factor), str(scale_work)], bench_scale.RESULT
    )
    results = {
        "scale_night_recipe": runs[FACTORS[0]]["recipe"],
        "scale_night_image_size": IMAGE_SIZE,
        "scale_night_compared_scale_factor": scale_factor,
        "scale_night_compared_scale_cells": scale["cells"],
    }
    for factor, run in runs.items():
        results[f"scale_night_{factor}x_cells"] = run["cells"]
        for stage, figures in run["stages"].items():
            for key in (
                "s_per_kcell",
                "dask_tasks_per_kcell",
                "prefect_task_runs_per_kcell",
                "flow_rss_mb_after",
                "flow_peak_rss_mb_after",
            ):
                results[f"scale_night_{factor}x_{stage}_{key}"] = figures[key]
        for process, peak in run["peak_rss_mb"].items():
            results[f"scale_night_{factor}x_peak_rss_mb_{process}"] = peak
    base, top = min(FACTORS), max(FACTORS)
    for stage in STAGES:
        results[f"scale_{scale_factor}x_{stage}_s_per_kcell"] = scale["stages"][stage][
            "s_per_kcell"
        ]
        results[f"scale_night_top_over_scale_{scale_factor}x_{stage}_s_per_kcell"] = (
            results[f"scale_night_{top}x_{stage}_s_per_kcell"]
            / results[f"scale_{scale_factor}x_{stage}_s_per_kcell"]
        )
    for process in PROCESSES:
        results[f"scale_{process}_peak_rss_mb_top_over_base"] = (
            results[f"scale_night_{top}x_peak_rss_mb_{process}"]
            / results[f"scale_night_{base}x_peak_rss_mb_{process}"]
        )
    for stage in STAGES:
        results[f"scale_night_{stage}_s_per_kcell_top_over_base"] = (
            results[f"scale_night_{top}x_{stage}_s_per_kcell"]
            / results[f"scale_night_{base}x_{stage}_s_per_kcell"]
        )
    rows = []
    for factor, run in runs.items():
        for stage, f in run["stages"].items():
            rows.append(
                (
                    f"{factor}x ({run['cells']:,} cells) {stage}",
                    f"{f['s_per_kcell']:.2f} s/1k cells, {f['prefect_task_runs_per_kcell']:.1f} "
                    f"Prefect task runs and {f['dask_tasks_per_kcell']:.0f} Dask tasks per 1k cells; "
                    f"flow after it {f['flow_rss_mb_after']:.0f} MiB (peak {f['flow_peak_rss_mb_after']:.0f})",
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
            f"{top}x / {base}x peak RSS {process}",
            f"{results[f'scale_{process}_peak_rss_mb_top_over_base']:.2f}x",
        )
        for process in PROCESSES
    ]
    rows += [
        (
            f"{top}x / {base}x {stage} time per cell",
            f"{results[f'scale_night_{stage}_s_per_kcell_top_over_base']:.2f}x",
        )
        for stage in STAGES
    ]
    rows += [
        (
            f"{top}x {stage} time per cell / scale benchmark's {scale_factor}x "
            f"({scale['cells']:,} real {bench_scale.IMAGE_SIZE} px cells), this run",
            f"{results[f'scale_night_{top}x_{stage}_s_per_kcell']:.2f} / "
            f"{results[f'scale_{scale_factor}x_{stage}_s_per_kcell']:.2f} s/1k cells = "
            f"{results[f'scale_night_top_over_scale_{scale_factor}x_{stage}_s_per_kcell']:.2f}x",
        )
        for stage in STAGES
    ]
    print_table(
        f"night: ingest and score of tiny {IMAGE_SIZE}x{IMAGE_SIZE} cells ({results['scale_night_recipe']} "
        f"recipe, untrained), 2 workers, base {BASE} cells",
        rows,
    )
    return record(results)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from flows.runner import quiet_dask_logs

    quiet_dask_logs()
    figures = run_factor(int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
    print(RESULT + json.dumps(figures), flush=True)
