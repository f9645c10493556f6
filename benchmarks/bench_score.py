"""Scoring throughput against this machine's ceiling, a paper-style baseline, and in bfloat16.

On the same real LMU cells (none of them used to train the model), in one run:
1. the fp32 ceiling: numpy's float32 matrix-product GFLOP/s over the model's FLOPs per cell;
2. model only: the compiled, BatchNorm-folded scorer on preloaded uint8 cells, fp32 and bf16,
   and the stock Keras graph (``tf.function`` over the paper model, batch 64) for reference;
3. the paper-style baseline: Keras ``load_img`` from files through a ``PyDataset`` + ``model.predict``;
4. ``score-smears`` end to end (ingest -> Zarr -> inference -> Parquet), fp32 on 1 and 2 Dask
   workers and bf16 on 2, from flow start to finish, model loading on the workers included;
5. bf16 against fp32 on a model trained on real cells: the largest per-cell probability
   difference, the ROC AUC difference, and the patient-level calls that change.
On a machine with a GPU the reduced precision is float16 (keys ``fp16_...`` instead of ``bf16_...``)
and the end-to-end runs use one worker per GPU.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

N_CELLS = int(os.environ.get("AML_SMEAR_BENCH_CELLS", "320"))
BATCH = 64


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


def end_to_end(n_workers: int, source: Path, store: Path, model_file: str, precision: str) -> tuple[float, dict]:
    """cells/s of score-smears on a fresh LocalCluster, and the flow's result."""
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    from flows.runner import local_cluster_kwargs
    from flows.score import score_smears

    with LocalCluster(**local_cluster_kwargs(n_workers)) as cluster:
        runner = DaskTaskRunner(address=cluster.scheduler_address)
        started = time.perf_counter()
        result = score_smears.with_options(task_runner=runner)(
            source=str(source), store=str(store), model=model_file, precision=precision, min_cells=50, explain=False)
        elapsed = time.perf_counter() - started
    return result["cells"] / elapsed, result


def main(context: dict) -> dict:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from aml_model.config import PreprocessConfig
    from aml_model.inference import BatchScorer, inference_model
    from aml_model.io import load_model
    from aml_model.preprocess import decode_cell
    from benchmarks.bench_retrain import trained_model
    from benchmarks.ceiling import matmul_gflops, model_flops_per_cell
    from benchmarks.common import print_table, record, require_lmu_cells, sample_cohort

    model_file = trained_model(context)
    work = Path(context["work"])
    source = work / "score-cohort"
    # Cells after the ones the model was trained on: a held-out cohort.
    cells = sample_cohort(require_lmu_cells(), source, N_CELLS, offset=context["retrain_cells"] // 2)
    files = [path for path, _ in cells]
    labels = np.array([label == "blast" for _, label in cells])
    model = load_model(model_file, compile=False)
    size = int(model.input_shape[1])
    images = np.stack([decode_cell(f.read_bytes(), str(f), PreprocessConfig(image_size=size)) for f in files])

    gflops, flops = matmul_gflops(), model_flops_per_cell(model)
    ceiling = gflops * 1e9 / flops
    stock, _ = stock_graph(model, images)
    import tensorflow as tf

    gpus = len(tf.config.list_physical_devices("GPU"))
    low, tag = ("float16", "fp16") if gpus else ("bfloat16", "bf16")
    fp32 = BatchScorer(inference_model(model, "float32"), BATCH)
    reduced = BatchScorer(inference_model(model, low), BATCH)
    (model_only, p32), (model_only_low, p_low) = _timed(fp32, images), _timed(reduced, images)
    baseline = paper_baseline(model, files)

    many = max(2, gpus)
    e2e_1, _ = end_to_end(1, source, work / "e2e-fp32-1w", model_file, "float32")
    e2e_2, run32 = end_to_end(many, source, work / "e2e-fp32-2w", model_file, "float32")
    e2e_low, run_low = end_to_end(many, source, work / f"e2e-{tag}-2w", model_file, low)
    calls32 = {row["patient_id"]: row["call"] for row in run32["patients"]}
    calls_low = {row["patient_id"]: row["call"] for row in run_low["patients"]}
    best = max(e2e_1, e2e_2)
    results = {
        "score_cells": len(files), "matmul_fp32_gflops": gflops, "model_gflop_per_cell": flops / 1e9,
        "fp32_ceiling_cells_per_s": ceiling, "stock_fp32_cells_per_s": stock,
        "model_only_cells_per_s": model_only, "model_only_over_ceiling": model_only / ceiling,
        "folded_over_stock_fp32": model_only / stock, f"model_only_{tag}_cells_per_s": model_only_low,
        "baseline_cells_per_s": baseline, "e2e_1w_cells_per_s": e2e_1, "e2e_2w_cells_per_s": e2e_2,
        f"e2e_{tag}_2w_cells_per_s": e2e_low, "workers2_over_1": e2e_2 / e2e_1,
        "e2e_over_model_only": best / model_only, f"e2e_{tag}_over_model_only_{tag}": e2e_low / model_only_low,
        "e2e_over_baseline": best / baseline, f"{tag}_over_fp32": model_only_low / stock,
        f"{tag}_max_abs_dp": float(np.abs(p_low - p32).max()), f"{tag}_mean_abs_dp": float(np.abs(p_low - p32).mean()),
        "fp32_auc": float(roc_auc_score(labels, p32)),
        f"{tag}_auc_delta": float(roc_auc_score(labels, p_low) - roc_auc_score(labels, p32)),
        f"{tag}_patient_calls_changed": sum(calls32[p] != calls_low.get(p) for p in calls32),
    }
    print_table(f"scoring {len(files)} held-out real LMU cells, trained paper model {size}x{size}", [
        ("fp32 ceiling (matmul GFLOP/s / GFLOP per cell)",
         f"{ceiling:.1f} cells/s ({gflops:.0f} / {flops / 1e9:.2f})"),
        ("stock Keras graph fp32 (tf.function, batch 64)", f"{stock:.1f} cells/s"),
        ("model only fp32 (folded, compiled)", f"{model_only:.1f} cells/s = {model_only / ceiling:.2f}x ceiling"),
        (f"model only {tag} (folded, compiled)", f"{model_only_low:.1f} cells/s = {model_only_low / stock:.2f}x stock fp32"),
        ("paper-style load_img + predict", f"{baseline:.1f} cells/s"),
        ("score-smears fp32, 1 worker", f"{e2e_1:.1f} cells/s"),
        (f"score-smears fp32, {many} workers", f"{e2e_2:.1f} cells/s ({e2e_2 / e2e_1:.2f}x 1 worker)"),
        (f"score-smears {tag}, {many} workers", f"{e2e_low:.1f} cells/s"),
        ("best e2e fp32 / model only", f"{best / model_only:.2f}x"),
        (f"e2e {tag} / model only {tag}", f"{e2e_low / model_only_low:.2f}x"),
        ("best e2e fp32 / baseline", f"{best / baseline:.2f}x"),
        (f"{tag} vs fp32: max |dp|, AUC delta", f"{results[f'{tag}_max_abs_dp']:.4f}, "
                                                f"{results[f'{tag}_auc_delta']:+.4f} (fp32 AUC {results['fp32_auc']:.3f})"),
        (f"{tag} patient calls changed", f"{results[f'{tag}_patient_calls_changed']} of {len(calls32)}"),
    ])
    return record(results)

