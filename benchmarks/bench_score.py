"""Scoring throughput against this machine's ceiling, a paper-style baseline, and in bfloat16.

On the same real LMU cells (none of them used to train the model), in one run:
1. the fp32 ceiling: the best float32 matrix-product GFLOP/s of numpy and TensorFlow over the
   model's FLOPs per cell (and the same for bf16, from TensorFlow's bf16 matrix product), and
   the ceilings at the model's own GEMM shapes: every convolution as the im2col matrix product
   it is, timed at its own (M, K, N) in fp32 and bf16 (``benchmarks.ceiling.gemm_ceiling_cells_per_s``),
   so that "x GEMM ceiling" compares the model with matrix products of its own sizes;
2. model only: the compiled, BatchNorm-folded scorer on preloaded uint8 cells, fp32 and bf16,
   and the stock Keras graph (``tf.function`` over the trained model, batch 64) for reference.
   The model is the default recipe's (``score_recipe`` names it in every run's figures).
   Every batch shape a timed pass uses (64 cells, and the shorter last batch) is traced before
   the clock starts. bf16 is reported over the folded fp32 scorer (the fair ratio: same graph,
   other precision) and over the stock graph;
3. the paper-style baseline: Keras ``load_img`` from files through a ``PyDataset`` + ``model.predict``,
   cold (its first call, which traces ``predict``) and warm (the same call again);
4. ``score-smears`` end to end (ingest -> Zarr -> inference -> Parquet), fp32 on 1 and 2 Dask
   workers and bf16 on 2, from flow start to finish: cold (model loading on the workers
   included) and warm (a second run on the same workers). Compared with the baseline like with
   like: cold over cold, warm over warm;
5. ``score-smears`` with ``precision="auto"`` (the default) on 2 workers, the trained model
   scored as registered (its card records its reduced-precision agreement on its test cells), so
   each worker picks what ``auto`` picks in production: ``e2e_auto_2w_cells_per_s`` and its ratio
   to fp32 end to end, with the precision it resolves to on this machine;
6. bf16 against fp32 on a model trained on real cells: the largest per-cell probability
   difference (against the accuracy guard ``aml_model.inference.REDUCED_PRECISION_MAX_ABS_DP``),
   the ROC AUC difference, and the patient-level calls that change.
On a machine with a GPU the reduced precision is float16 (keys ``fp16_...`` instead of ``bf16_...``)
and the end-to-end runs use one worker per GPU.

The end-to-end runs read nothing from the store by path: what they compare comes from the flow's
return value (``_score_run``), so a change of the run store's layout does not reach this file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

BATCH = 64


def n_cells(trained_on: int) -> int:
    """Cells to score: ``AML_SMEAR_BENCH_CELLS``, or every LMU cell the model was not trained on."""
    from benchmarks.common import lmu_rows, require_lmu_cells

    if os.environ.get("AML_SMEAR_BENCH_CELLS"):
        return int(os.environ["AML_SMEAR_BENCH_CELLS"])
    blasts, normals = lmu_rows(require_lmu_cells())
    return 2 * (min(len(blasts), len(normals)) - trained_on // 2)


def batch_lengths(n: int, batch: int = BATCH) -> list[int]:
    """The distinct batch lengths of one pass over ``n`` cells in batches of ``batch``, longest first."""
    return sorted({min(batch, n - start) for start in range(0, n, batch)}, reverse=True)


def _timed(score, images) -> tuple[float, object, float]:
    """cells/s of ``score`` over ``images``, its output, and the CPU seconds a cell it took (this
    process's, TensorFlow's threads included).

    Before the clock starts, ``score`` sees one batch of every length the timed pass uses, so a
    graph traced per input shape (the stock ``tf.function``) retraces nothing inside the clock.
    """
    for length in batch_lengths(len(images)):
        score(images[:length])
    started, cpu = time.perf_counter(), time.process_time()
    output = score(images)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return len(images) / elapsed, output, cpu / len(images)


def stock_graph(model, images) -> tuple[float, object, float]:
    """cells/s and probabilities of the unmodified trained model as one tf.function of batch 64."""
    import numpy as np
    import tensorflow as tf

    from aml_model.preprocess import normalise_for_resnet50

    step = tf.function(
        lambda x: model(normalise_for_resnet50(tf.cast(x, tf.float32)), training=False)
    )

    def score(cells):
        return np.concatenate(
            [step(cells[i : i + BATCH]).numpy().reshape(-1) for i in range(0, len(cells), BATCH)]
        )

    return _timed(score, images)


def paper_baseline(model, files: list[Path]) -> dict[str, float]:
    """cells/s of Keras ``load_img`` + ``model.predict`` over ``files``: the first call, then the same again."""
    import keras
    import numpy as np

    size = int(model.input_shape[1])

    class Images(keras.utils.PyDataset):
        def __init__(self, batch_size: int = 32):
            super().__init__()
            self.batch_size = batch_size

        def __len__(self):
            return (len(files) + self.batch_size - 1) // self.batch_size

        def __getitem__(self, index):
            batch = files[index * self.batch_size : (index + 1) * self.batch_size]
            arrays = [
                keras.utils.img_to_array(keras.utils.load_img(f, target_size=(size, size)))
                for f in batch
            ]
            return keras.applications.resnet50.preprocess_input(np.stack(arrays))

    timings = {}
    for run in ("cold", "warm"):
        started = time.perf_counter()
        model.predict(Images(), verbose=0)
        timings[run] = len(files) / (time.perf_counter() - started)
    return timings


def end_to_end(n_workers: int, source: Path, store: Path, model_file: str, precision: str) -> dict:
    """score-smears on a fresh LocalCluster, twice: cold, then warm, with ``model_file``
    registered in ``store`` (:func:`registered_in`: the flows score registered models only): the
    cells/s of each run, the warm run's CPU seconds a cell over every process it used (the flow
    and scheduler, the workers, the Prefect API server: :func:`benchmarks.common.run_processes`),
    the warm run's result and the version scored.

    The cold run pays for worker start-up: loading the model, deriving its inference form and
    tracing it. The warm run scores the same cells into a new run on the same cluster, whose
    workers already hold the model, as a standing Dask cluster's do from the second smear on:
    like the model-only figure, it leaves out the one-off costs. Both clocks cover the whole
    flow (discover, decode, Zarr, inference, tables, reports), not the cluster's start.
    """
    from distributed import Client, LocalCluster
    from prefect_dask import DaskTaskRunner

    from benchmarks.common import cpu_seconds, run_processes
    from flows.runner import local_cluster_kwargs
    from flows.score import score_smears

    timings = {}
    version = registered_in(model_file, store)
    with LocalCluster(**local_cluster_kwargs(n_workers)) as cluster, Client(cluster) as client:
        flow = score_smears.with_options(
            task_runner=DaskTaskRunner(address=cluster.scheduler_address)
        )
        timings["cold"], _ = _score_run(flow, source, store, version, "cold", precision)
        # Listed after the cold run, so that a worker its nanny restarted is the one measured.
        processes = run_processes(client)
        before = sum(cpu_seconds(processes).values())
        timings["warm"], result = _score_run(flow, source, store, version, "warm", precision)
        cpu = sum(cpu_seconds(processes).values()) - before
    return {**timings, "cpu_per_cell": cpu / result["cells"], "result": result, "version": version}


def _score_run(
    flow, source: Path, store: Path, model: str, run: str, precision: str
) -> tuple[float, dict]:
    """One timed score-smears run under its own run id with ``model``, a version registered in
    ``store``: cells/s and the flow's result (cells, patients).

    The one place that knows the flow's parameters and result; a run that found its work already
    done would time nothing, and is refused.
    """
    from flows.parameters import ScoreOptions

    started = time.perf_counter()
    result = flow(
        source=str(source),
        store=str(store),
        options=ScoreOptions(
            model=model, run_id=run, precision=precision, min_cells=50, explain=False
        ),
    )
    elapsed = time.perf_counter() - started
    if result.get("already_complete") or not result["cells"]:
        message = (
            f"score-smears run {run!r} in {store} scored nothing new: its timing would mean nothing"
        )
        raise SystemExit(message)
    return result["cells"] / elapsed, result


def registered_in(model_url: str, store: Path) -> str:
    """Copy the trained model's registry entry (model and card) into ``store``; returns its version.

    A bare .keras file (``AML_SMEAR_BENCH_MODEL``) has no card: it is copied alone, and ``auto``
    then scores it in float32, as it would in production.
    """
    import json
    import shutil

    source = Path(model_url)
    version = (
        source.parent.name
        if (source.parent / "model_card.json").exists()
        else f"bare-{source.stem}"
    )
    target = store / "models" / version
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target / "model.keras")
    card = source.parent / "model_card.json"
    if card.exists():
        shutil.copyfile(card, target / "model_card.json")
    else:
        from aml_model.io import load_model

        size = int(load_model(source, compile=False).input_shape[1])
        (target / "model_card.json").write_text(
            json.dumps({"config": {"model": {"image_size": size}}})
        )
    return version


def main(context: dict) -> dict:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from aml_model.config import PreprocessConfig
    from aml_model.inference import BatchScorer, inference_model
    from aml_model.io import load_model
    from aml_model.preprocess import decode_cell
    from benchmarks.bench_retrain import trained_model
    from benchmarks.ceiling import (
        gemm_ceiling_cells_per_s,
        model_flops_per_cell,
        numpy_matmul_gflops,
        tensorflow_matmul_gflops,
    )
    from benchmarks.common import print_table, record, require_lmu_cells, sample_cohort

    model_file = trained_model(context)
    recipe = recipe_of(model_file)
    work = Path(context["work"])
    source = work / "score-cohort"
    # Cells after the ones the model was trained on: a held-out cohort.
    cells = sample_cohort(
        require_lmu_cells(),
        source,
        n_cells(context["retrain_cells"]),
        offset=context["retrain_cells"] // 2,
    )
    files = [path for path, _ in cells]
    labels = np.array([label == "blast" for _, label in cells])
    model = load_model(model_file, compile=False)
    size = int(model.input_shape[1])
    images = np.stack(
        [decode_cell(f.read_bytes(), str(f), PreprocessConfig(image_size=size)) for f in files]
    )

    import tensorflow as tf

    gpus = len(tf.config.list_physical_devices("GPU"))
    low, tag = ("float16", "fp16") if gpus else ("bfloat16", "bf16")
    gflops = {"numpy": numpy_matmul_gflops(), "tensorflow": tensorflow_matmul_gflops("float32")}
    gflops_low = tensorflow_matmul_gflops(low, n=2048)
    flops = model_flops_per_cell(model)
    best_library = max(gflops, key=gflops.get)
    ceiling, ceiling_low = gflops[best_library] * 1e9 / flops, gflops_low * 1e9 / flops
    gemm_ceiling, gemm_ceiling_low = (
        gemm_ceiling_cells_per_s(model, "float32"),
        gemm_ceiling_cells_per_s(model, low),
    )
    stock, _, _ = stock_graph(model, images)
    fp32 = BatchScorer(inference_model(model, "float32"), BATCH)
    reduced = BatchScorer(inference_model(model, low), BATCH)
    model_only, p32, cpu32 = _timed(fp32, images)
    model_only_low, p_low, cpu_low = _timed(reduced, images)
    baseline = paper_baseline(model, files)

    many = max(2, gpus)
    e2e_1 = end_to_end(1, source, work / "e2e-fp32-1w", model_file, "float32")
    e2e_2 = end_to_end(many, source, work / "e2e-fp32-2w", model_file, "float32")
    e2e_low = end_to_end(many, source, work / f"e2e-{tag}-2w", model_file, low)
    auto_store = work / "e2e-auto-2w"
    e2e_auto = end_to_end(many, source, auto_store, model_file, "auto")
    auto_precision, auto_reason = _auto_choice(auto_store, e2e_auto["version"], gpus > 0)
    calls32 = {row["patient_id"]: row["call"] for row in e2e_2["result"]["patients"]}
    calls_low = {row["patient_id"]: row["call"] for row in e2e_low["result"]["patients"]}
    best = {run: max(e2e_1[run], e2e_2[run]) for run in ("warm", "cold")}
    cores = len(os.sched_getaffinity(0))
    results = {
        "score_cells": len(files),
        "score_recipe": recipe,
        "matmul_fp32_gflops": gflops[best_library],
        "matmul_fp32_gflops_numpy": gflops["numpy"],
        "matmul_fp32_gflops_tensorflow": gflops["tensorflow"],
        f"matmul_{tag}_gflops_tensorflow": gflops_low,
        "model_gflop_per_cell": flops / 1e9,
        "fp32_ceiling_cells_per_s": ceiling,
        f"{tag}_ceiling_cells_per_s": ceiling_low,
        "stock_fp32_cells_per_s": stock,
        "model_only_cells_per_s": model_only,
        "model_only_over_ceiling": model_only / ceiling,
        "folded_over_stock_fp32": model_only / stock,
        f"model_only_{tag}_cells_per_s": model_only_low,
        f"model_only_{tag}_over_{tag}_ceiling": model_only_low / ceiling_low,
        "fp32_gemm_ceiling_cells_per_s": gemm_ceiling,
        f"{tag}_gemm_ceiling_cells_per_s": gemm_ceiling_low,
        "model_only_over_gemm_ceiling": model_only / gemm_ceiling,
        f"model_only_{tag}_over_{tag}_gemm_ceiling": model_only_low / gemm_ceiling_low,
        "baseline_cells_per_s": baseline["cold"],
        "baseline_warm_cells_per_s": baseline["warm"],
        "e2e_1w_cells_per_s": e2e_1["warm"],
        "e2e_2w_cells_per_s": e2e_2["warm"],
        f"e2e_{tag}_2w_cells_per_s": e2e_low["warm"],
        "e2e_1w_cold_cells_per_s": e2e_1["cold"],
        "e2e_2w_cold_cells_per_s": e2e_2["cold"],
        f"e2e_{tag}_2w_cold_cells_per_s": e2e_low["cold"],
        "workers2_over_1": e2e_2["warm"] / e2e_1["warm"],
        "e2e_over_model_only": best["warm"] / model_only,
        f"e2e_{tag}_over_model_only_{tag}": e2e_low["warm"] / model_only_low,
        "e2e_cold_over_model_only": best["cold"] / model_only,
        # Like with like: the best cold run over the baseline's first call, warm over warm.
        "e2e_over_baseline": best["cold"] / baseline["cold"],
        "e2e_over_baseline_warm": best["warm"] / baseline["warm"],
        f"{tag}_over_fp32": model_only_low / stock,
        f"{tag}_over_folded_fp32": model_only_low / model_only,
        f"{tag}_max_abs_dp": float(np.abs(p_low - p32).max()),
        f"{tag}_mean_abs_dp": float(np.abs(p_low - p32).mean()),
        "fp32_auc": float(roc_auc_score(labels, p32)),
        f"{tag}_auc_delta": float(roc_auc_score(labels, p_low) - roc_auc_score(labels, p32)),
        f"{tag}_patient_calls_changed": sum(calls32[p] != calls_low.get(p) for p in calls32),
        "e2e_auto_2w_cells_per_s": e2e_auto["warm"],
        "e2e_auto_2w_cold_cells_per_s": e2e_auto["cold"],
        "e2e_auto_over_fp32_2w": e2e_auto["warm"] / e2e_2["warm"],
        "auto_precision": auto_precision,
        "auto_precision_reason": auto_reason,
        # What the CPU allows: a warm run cannot go faster than the machine's cores over its CPU a
        # cell, whatever the overlap; over model only, that is the most "e2e over model only" can
        # reach with today's work beside the model.
        "cores": cores,
        "model_only_cpu_ms_per_cell": 1e3 * cpu32,
        f"model_only_{tag}_cpu_ms_per_cell": 1e3 * cpu_low,
        "e2e_1w_cpu_ms_per_cell": 1e3 * e2e_1["cpu_per_cell"],
        "e2e_2w_cpu_ms_per_cell": 1e3 * e2e_2["cpu_per_cell"],
        f"e2e_{tag}_2w_cpu_ms_per_cell": 1e3 * e2e_low["cpu_per_cell"],
        "e2e_auto_2w_cpu_ms_per_cell": 1e3 * e2e_auto["cpu_per_cell"],
        "e2e_cpu_bound_over_model_only": cores
        / min(e2e_1["cpu_per_cell"], e2e_2["cpu_per_cell"])
        / model_only,
        f"e2e_{tag}_cpu_bound_over_model_only_{tag}": cores
        / e2e_low["cpu_per_cell"]
        / model_only_low,
    }
    print_table(
        f"scoring {len(files)} held-out real LMU cells, trained {recipe} model {size}x{size}",
        _table(results, tag, best_library, many, len(calls32)),
    )
    return record(results)


def recipe_of(model_file: str) -> str:
    """The recipe the model's card records ("robust", "paper"...), so that every figure names what
    was scored (the recipes differ twofold in FLOPs); "unrecorded" for a bare .keras file."""
    import json

    card = Path(model_file).with_name("model_card.json")
    return (
        json.loads(card.read_text()).get("recipe", "unrecorded") if card.exists() else "unrecorded"
    )


def _auto_choice(store: Path, version: str, gpu: bool) -> tuple[str, str]:
    """What ``precision="auto"`` resolves to on this machine for the registered model, by the rule
    the workers apply (:func:`aml_model.precision.resolve_precision`)."""
    from aml_model.inference import REDUCED_PRECISION_MAX_ABS_DP
    from aml_model.precision import cpu_flags, resolve_precision
    from tasks.registry import resolve_model
    from tasks.store import Store

    ref = resolve_model(version, Store(str(store)))
    return resolve_precision(
        "auto", ref.precision_agreement, cpu_flags(), gpu, REDUCED_PRECISION_MAX_ABS_DP
    )


def _table(r: dict, tag: str, best_library: str, many: int, patients: int) -> list[tuple[str, str]]:
    """The printed rows, from the recorded results ``r``."""
    from aml_model.inference import REDUCED_PRECISION_MAX_ABS_DP

    dp = r[f"{tag}_max_abs_dp"]
    guard = "within" if dp <= REDUCED_PRECISION_MAX_ABS_DP else "OVER"
    return [
        (
            "fp32 ceiling (best matmul GFLOP/s / GFLOP per cell)",
            f"{r['fp32_ceiling_cells_per_s']:.1f} cells/s ({r['matmul_fp32_gflops']:.0f} {best_library} / "
            f"{r['model_gflop_per_cell']:.2f}; numpy {r['matmul_fp32_gflops_numpy']:.0f}, "
            f"tensorflow {r['matmul_fp32_gflops_tensorflow']:.0f})",
        ),
        (
            f"{tag} ceiling (tensorflow matmul)",
            f"{r[f'{tag}_ceiling_cells_per_s']:.1f} cells/s ({r[f'matmul_{tag}_gflops_tensorflow']:.0f} GFLOP/s)",
        ),
        (
            "ceilings at the model's own GEMM shapes, fp32 / " + tag,
            f"{r['fp32_gemm_ceiling_cells_per_s']:.1f} / {r[f'{tag}_gemm_ceiling_cells_per_s']:.1f} "
            "cells/s; model only "
            f"{r['model_only_over_gemm_ceiling']:.2f}x / {r[f'model_only_{tag}_over_{tag}_gemm_ceiling']:.2f}x of them",
        ),
        (
            "stock Keras graph fp32 (tf.function, batch 64)",
            f"{r['stock_fp32_cells_per_s']:.1f} cells/s",
        ),
        (
            "model only fp32 (folded, compiled)",
            f"{r['model_only_cells_per_s']:.1f} cells/s = {r['model_only_over_ceiling']:.2f}x ceiling, "
            f"{r['folded_over_stock_fp32']:.2f}x stock fp32",
        ),
        (
            f"model only {tag} (folded, compiled)",
            f"{r[f'model_only_{tag}_cells_per_s']:.1f} cells/s = "
            f"{r[f'model_only_{tag}_over_{tag}_ceiling']:.2f}x {tag} ceiling",
        ),
        (
            f"{tag} / folded fp32 (same graph, the fair ratio)",
            f"{r[f'{tag}_over_folded_fp32']:.2f}x",
        ),
        (f"{tag} / stock fp32", f"{r[f'{tag}_over_fp32']:.2f}x"),
        (
            "paper-style load_img + predict, warm (cold)",
            f"{r['baseline_warm_cells_per_s']:.1f} ({r['baseline_cells_per_s']:.1f}) cells/s",
        ),
        (
            "score-smears fp32, 1 worker, warm (cold)",
            f"{r['e2e_1w_cells_per_s']:.1f} ({r['e2e_1w_cold_cells_per_s']:.1f}) cells/s",
        ),
        (
            f"score-smears fp32, {many} workers, warm (cold)",
            f"{r['e2e_2w_cells_per_s']:.1f} ({r['e2e_2w_cold_cells_per_s']:.1f}) cells/s; "
            f"warm {r['workers2_over_1']:.2f}x 1 worker",
        ),
        (
            f"score-smears {tag}, {many} workers, warm (cold)",
            f"{r[f'e2e_{tag}_2w_cells_per_s']:.1f} ({r[f'e2e_{tag}_2w_cold_cells_per_s']:.1f}) cells/s",
        ),
        (
            "best e2e fp32 / model only, warm (cold)",
            f"{r['e2e_over_model_only']:.2f}x ({r['e2e_cold_over_model_only']:.2f}x)",
        ),
        (f"warm e2e {tag} / model only {tag}", f"{r[f'e2e_{tag}_over_model_only_{tag}']:.2f}x"),
        (
            f"CPU ms a cell, model only fp32 / {tag}",
            f"{r['model_only_cpu_ms_per_cell']:.1f} / {r[f'model_only_{tag}_cpu_ms_per_cell']:.1f}",
        ),
        (
            f"CPU ms a cell, warm e2e fp32 1w / fp32 {many}w / {tag} / auto (all processes)",
            f"{r['e2e_1w_cpu_ms_per_cell']:.1f} / {r['e2e_2w_cpu_ms_per_cell']:.1f} / "
            f"{r[f'e2e_{tag}_2w_cpu_ms_per_cell']:.1f} / {r['e2e_auto_2w_cpu_ms_per_cell']:.1f}",
        ),
        (
            f"most e2e / model only the CPU allows ({r['cores']} cores always busy), fp32 / {tag}",
            f"{r['e2e_cpu_bound_over_model_only']:.2f}x / "
            f"{r[f'e2e_{tag}_cpu_bound_over_model_only_{tag}']:.2f}x",
        ),
        (
            "best e2e fp32 / baseline, warm / warm (cold / cold)",
            f"{r['e2e_over_baseline_warm']:.2f}x ({r['e2e_over_baseline']:.2f}x)",
        ),
        (
            f"{tag} vs fp32: max |dp|, AUC delta",
            f"{dp:.4f} ({guard} the {REDUCED_PRECISION_MAX_ABS_DP} guard), {r[f'{tag}_auc_delta']:+.4f} "
            f"(fp32 AUC {r['fp32_auc']:.3f})",
        ),
        (f"{tag} patient calls changed", f"{r[f'{tag}_patient_calls_changed']} of {patients}"),
        (
            f"score-smears auto, {many} workers, warm (cold)",
            f"{r['e2e_auto_2w_cells_per_s']:.1f} ({r['e2e_auto_2w_cold_cells_per_s']:.1f}) cells/s = "
            f"{r['e2e_auto_over_fp32_2w']:.2f}x fp32; auto = {r['auto_precision']} ({r['auto_precision_reason']})",
        ),
    ]
