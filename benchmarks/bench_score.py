"""Scoring throughput against this machine's ceiling, a paper-style baseline, and in bfloat16.

On the same real LMU cells (none of them used to train the model), in one run:
1. the fp32 ceiling: the best float32 matrix-product GFLOP/s of numpy and TensorFlow over the
   model's FLOPs per cell (and the same for bf16, from TensorFlow's bf16 matrix product);
2. model only: the compiled, BatchNorm-folded scorer on preloaded uint8 cells, fp32 and bf16,
   and the stock Keras graph (``tf.function`` over the paper model, batch 64) for reference;
3. the paper-style baseline: Keras ``load_img`` from files through a ``PyDataset`` + ``model.predict``;
4. ``score-smears`` end to end (ingest -> Zarr -> inference -> Parquet), fp32 on 1 and 2 Dask
   workers and bf16 on 2, from flow start to finish: cold (model loading on the workers
   included) and warm (a second run on the same workers);
5. bf16 against fp32 on a model trained on real cells: the largest per-cell probability
   difference, the ROC AUC difference, and the patient-level calls that change.
On a machine with a GPU the reduced precision is float16 (keys ``fp16_...`` instead of ``bf16_...``)
and the end-to-end runs use one worker per GPU.
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


def _timed(score, images) -> tuple[float, object]:
    """cells/s of ``score`` over ``images`` (traced and warmed up outside the clock), and its output."""
    score(images[:BATCH])
    started = time.perf_counter()
    output = score(images)
    return len(images) / (time.perf_counter() - started), output


def stock_graph(model, images) -> tuple[float, object]:
    """cells/s and probabilities of the unmodified paper model as one tf.function of batch 64."""
    import numpy as np
    import tensorflow as tf

    from aml_model.preprocess import normalise_for_resnet50

    step = tf.function(lambda x: model(normalise_for_resnet50(tf.cast(x, tf.float32)), training=False))

    def score(cells):
        return np.concatenate([step(cells[i:i + BATCH]).numpy().reshape(-1) for i in range(0, len(cells), BATCH)])

    return _timed(score, images)


def paper_baseline(model, files: list[Path]) -> float:
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
            batch = files[index * self.batch_size:(index + 1) * self.batch_size]
            arrays = [keras.utils.img_to_array(keras.utils.load_img(f, target_size=(size, size))) for f in batch]
            return keras.applications.resnet50.preprocess_input(np.stack(arrays))

    started = time.perf_counter()
    model.predict(Images(), verbose=0)
    return len(files) / (time.perf_counter() - started)


def end_to_end(n_workers: int, source: Path, store: Path, model_file: str, precision: str) -> dict:
    """score-smears on a fresh LocalCluster, twice: cold, then warm.

    The cold run pays for worker start-up: loading the model, deriving its inference form and
    tracing it. The warm run scores the same cells into a new run on the same cluster, whose
    workers already hold the model, as a standing Dask cluster's do from the second smear on:
    like the model-only figure, it leaves out the one-off costs. Both clocks cover the whole
    flow (discover, decode, Zarr, inference, tables, reports), not the cluster's start.
    """
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    from flows.runner import local_cluster_kwargs
    from flows.score import score_smears

    timings = {}
    with LocalCluster(**local_cluster_kwargs(n_workers)) as cluster:
        flow = score_smears.with_options(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
        for run in ("cold", "warm"):
            started = time.perf_counter()
            result = flow(source=str(source), store=str(store), model=model_file, run_id=run, precision=precision,
                          min_cells=50, explain=False)
            timings[run] = result["cells"] / (time.perf_counter() - started)
    return {**timings, "result": result}


def main(context: dict) -> dict:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from aml_model.config import PreprocessConfig
    from aml_model.inference import BatchScorer, inference_model
    from aml_model.io import load_model
    from aml_model.preprocess import decode_cell
    from benchmarks.bench_retrain import trained_model
    from benchmarks.ceiling import model_flops_per_cell, numpy_matmul_gflops, tensorflow_matmul_gflops
    from benchmarks.common import print_table, record, require_lmu_cells, sample_cohort

    model_file = trained_model(context)
    work = Path(context["work"])
    source = work / "score-cohort"
    # Cells after the ones the model was trained on: a held-out cohort.
    cells = sample_cohort(require_lmu_cells(), source, n_cells(context["retrain_cells"]),
                          offset=context["retrain_cells"] // 2)
    files = [path for path, _ in cells]
    labels = np.array([label == "blast" for _, label in cells])
    model = load_model(model_file, compile=False)
    size = int(model.input_shape[1])
    images = np.stack([decode_cell(f.read_bytes(), str(f), PreprocessConfig(image_size=size)) for f in files])

    import tensorflow as tf

    gpus = len(tf.config.list_physical_devices("GPU"))
    low, tag = ("float16", "fp16") if gpus else ("bfloat16", "bf16")
    gflops = {"numpy": numpy_matmul_gflops(), "tensorflow": tensorflow_matmul_gflops("float32")}
    gflops_low = tensorflow_matmul_gflops(low, n=2048)
    flops = model_flops_per_cell(model)
    best_library = max(gflops, key=gflops.get)
    ceiling, ceiling_low = gflops[best_library] * 1e9 / flops, gflops_low * 1e9 / flops
    stock, _ = stock_graph(model, images)
    fp32 = BatchScorer(inference_model(model, "float32"), BATCH)
    reduced = BatchScorer(inference_model(model, low), BATCH)
    (model_only, p32), (model_only_low, p_low) = _timed(fp32, images), _timed(reduced, images)
    baseline = paper_baseline(model, files)

    many = max(2, gpus)
    e2e_1 = end_to_end(1, source, work / "e2e-fp32-1w", model_file, "float32")
    e2e_2 = end_to_end(many, source, work / "e2e-fp32-2w", model_file, "float32")
    e2e_low = end_to_end(many, source, work / f"e2e-{tag}-2w", model_file, low)
    calls32 = {row["patient_id"]: row["call"] for row in e2e_2["result"]["patients"]}
    calls_low = {row["patient_id"]: row["call"] for row in e2e_low["result"]["patients"]}
    best = max(e2e_1["warm"], e2e_2["warm"])
    results = {
        "score_cells": len(files), "matmul_fp32_gflops": gflops[best_library],
        "matmul_fp32_gflops_numpy": gflops["numpy"], "matmul_fp32_gflops_tensorflow": gflops["tensorflow"],
        f"matmul_{tag}_gflops_tensorflow": gflops_low, "model_gflop_per_cell": flops / 1e9,
        "fp32_ceiling_cells_per_s": ceiling, f"{tag}_ceiling_cells_per_s": ceiling_low,
        "stock_fp32_cells_per_s": stock,
        "model_only_cells_per_s": model_only, "model_only_over_ceiling": model_only / ceiling,
        "folded_over_stock_fp32": model_only / stock, f"model_only_{tag}_cells_per_s": model_only_low,
        f"model_only_{tag}_over_{tag}_ceiling": model_only_low / ceiling_low,
        "baseline_cells_per_s": baseline,
        "e2e_1w_cells_per_s": e2e_1["warm"], "e2e_2w_cells_per_s": e2e_2["warm"],
        f"e2e_{tag}_2w_cells_per_s": e2e_low["warm"],
        "e2e_1w_cold_cells_per_s": e2e_1["cold"], "e2e_2w_cold_cells_per_s": e2e_2["cold"],
        f"e2e_{tag}_2w_cold_cells_per_s": e2e_low["cold"], "workers2_over_1": e2e_2["warm"] / e2e_1["warm"],
        "e2e_over_model_only": best / model_only, f"e2e_{tag}_over_model_only_{tag}": e2e_low["warm"] / model_only_low,
        "e2e_cold_over_model_only": max(e2e_1["cold"], e2e_2["cold"]) / model_only,
        "e2e_over_baseline": best / baseline, f"{tag}_over_fp32": model_only_low / stock,
        f"{tag}_over_folded_fp32": model_only_low / model_only,
        f"{tag}_max_abs_dp": float(np.abs(p_low - p32).max()), f"{tag}_mean_abs_dp": float(np.abs(p_low - p32).mean()),
        "fp32_auc": float(roc_auc_score(labels, p32)),
        f"{tag}_auc_delta": float(roc_auc_score(labels, p_low) - roc_auc_score(labels, p32)),
        f"{tag}_patient_calls_changed": sum(calls32[p] != calls_low.get(p) for p in calls32),
    }
    print_table(f"scoring {len(files)} held-out real LMU cells, trained paper model {size}x{size}", [
        ("fp32 ceiling (best matmul GFLOP/s / GFLOP per cell)",
         f"{ceiling:.1f} cells/s ({gflops[best_library]:.0f} {best_library} / {flops / 1e9:.2f}; "
         f"numpy {gflops['numpy']:.0f}, tensorflow {gflops['tensorflow']:.0f})"),
        (f"{tag} ceiling (tensorflow matmul)", f"{ceiling_low:.1f} cells/s ({gflops_low:.0f} GFLOP/s)"),
        ("stock Keras graph fp32 (tf.function, batch 64)", f"{stock:.1f} cells/s"),
        ("model only fp32 (folded, compiled)", f"{model_only:.1f} cells/s = {model_only / ceiling:.2f}x ceiling"),
        (f"model only {tag} (folded, compiled)", f"{model_only_low:.1f} cells/s = {model_only_low / stock:.2f}x stock "
                                                 f"fp32, {model_only_low / ceiling_low:.2f}x {tag} ceiling"),
        ("paper-style load_img + predict", f"{baseline:.1f} cells/s"),
        ("score-smears fp32, 1 worker, warm (cold)", f"{e2e_1['warm']:.1f} ({e2e_1['cold']:.1f}) cells/s"),
        (f"score-smears fp32, {many} workers, warm (cold)",
         f"{e2e_2['warm']:.1f} ({e2e_2['cold']:.1f}) cells/s; warm {e2e_2['warm'] / e2e_1['warm']:.2f}x 1 worker"),
        (f"score-smears {tag}, {many} workers, warm (cold)", f"{e2e_low['warm']:.1f} ({e2e_low['cold']:.1f}) cells/s"),
        ("best warm e2e fp32 / model only", f"{best / model_only:.2f}x (cold {results['e2e_cold_over_model_only']:.2f}x)"),
        (f"warm e2e {tag} / model only {tag}", f"{e2e_low['warm'] / model_only_low:.2f}x"),
        ("best warm e2e fp32 / baseline", f"{best / baseline:.2f}x"),
        (f"{tag} vs fp32: max |dp|, AUC delta", f"{results[f'{tag}_max_abs_dp']:.4f}, "
                                                f"{results[f'{tag}_auc_delta']:+.4f} (fp32 AUC {results['fp32_auc']:.3f})"),
        (f"{tag} patient calls changed", f"{results[f'{tag}_patient_calls_changed']} of {len(calls32)}"),
    ])
    return record(results)
