"""End-to-end scoring throughput against the model's own ceiling and a paper-style baseline.

On the same real LMU cells, in one run:
1. model only: ``model.predict`` on preloaded, normalised tensors (the ceiling here);
2. paper-style baseline: Keras ``load_img`` from files through a ``PyDataset`` + ``model.predict``;
3. ``score-smears`` end to end (decode -> Zarr -> inference -> Parquet) on 1 and 2 Dask workers,
   timed from flow start to finish, model loading on the workers included.
The model is the paper's full 224x224 architecture with an untrained backbone (no ImageNet
weights offline); speed does not depend on the weights.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

N_CELLS = int(os.environ.get("AML_SMEAR_BENCH_CELLS", "320"))


def sample_cohort(lmu: Path, root: Path, n_cells: int) -> list[tuple[Path, str]]:
    """Copy n_cells real cells, half blasts, into four patient folders under a temporary root.

    Writes ``root/labels.csv``; returns (path, label) per cell.
    """
    import csv

    with open(lmu / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    picked = [r for r in rows if r["label"] == "blast"][: n_cells // 2] + \
             [r for r in rows if r["label"] == "normal"][: n_cells - n_cells // 2]
    cells = []
    for number, row in enumerate(picked):
        patient = root / f"P{number % 4}"
        patient.mkdir(parents=True, exist_ok=True)
        target = patient / Path(row["file"]).name
        shutil.copyfile(lmu / row["file"], target)
        cells.append((target, row["label"]))
    (root / "labels.csv").write_text("image,label\n" + "".join(
        f"{path.relative_to(root).as_posix()},{label}\n" for path, label in cells))
    return cells


def model_only(model, files: list[Path]) -> float:
    import numpy as np

    from aml_model.preprocess import decode_cell, normalise_for_resnet50

    tensors = normalise_for_resnet50(np.stack([decode_cell(f.read_bytes(), str(f)) for f in files]).astype("float32"))
    model.predict(tensors[:64], batch_size=64, verbose=0)
    started = time.perf_counter()
    model.predict(tensors, batch_size=64, verbose=0)
    return len(files) / (time.perf_counter() - started)


def paper_baseline(model, files: list[Path]) -> float:
    import keras
    import numpy as np

    class Images(keras.utils.PyDataset):
        def __init__(self, batch_size: int = 32):
            super().__init__()
            self.batch_size = batch_size

        def __len__(self):
            return (len(files) + self.batch_size - 1) // self.batch_size

        def __getitem__(self, index):
            batch = files[index * self.batch_size:(index + 1) * self.batch_size]
            arrays = [keras.utils.img_to_array(keras.utils.load_img(f, target_size=(224, 224))) for f in batch]
            return keras.applications.resnet50.preprocess_input(np.stack(arrays))

    started = time.perf_counter()
    model.predict(Images(), verbose=0)
    return len(files) / (time.perf_counter() - started)


def end_to_end(n_workers: int, source: Path, model_file: str) -> float:
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    from flows.runner import local_cluster_kwargs

    from flows.score import score_smears

    with tempfile.TemporaryDirectory() as store, LocalCluster(**local_cluster_kwargs(n_workers)) as cluster:
        runner = DaskTaskRunner(address=cluster.scheduler_address)
        started = time.perf_counter()
        result = score_smears.with_options(task_runner=runner)(source=str(source), store=store, model=model_file)
        elapsed = time.perf_counter() - started
    return result["cells"] / elapsed


def main() -> dict:
    import keras

    from aml_model.architecture import build_model
    from aml_model.config import ModelConfig
    from benchmarks.common import print_table, record, require_lmu_cells
    from flows.runner import quiet_dask_logs, shared_prefect_api

    lmu = require_lmu_cells()
    quiet_dask_logs()
    with tempfile.TemporaryDirectory() as work:
        files = [path for path, _ in sample_cohort(lmu, Path(work) / "cohort", N_CELLS)]
        keras.utils.set_random_seed(0)
        model = build_model(ModelConfig(backbone_weights="none"))
        model_file = str(Path(work) / "paper.keras")
        model.save(model_file)
        ceiling = model_only(model, files)
        baseline = paper_baseline(model, files)
        with shared_prefect_api():
            e2e_1 = end_to_end(1, Path(work) / "cohort", model_file)
            e2e_2 = end_to_end(2, Path(work) / "cohort", model_file)
    best = max(e2e_1, e2e_2)
    results = {
        "model_only_cells_per_s": ceiling, "baseline_cells_per_s": baseline,
        "e2e_1w_cells_per_s": e2e_1, "e2e_2w_cells_per_s": e2e_2,
        "e2e_over_model_only": best / ceiling, "e2e_over_baseline": best / baseline,
    }
    print_table(f"scoring {len(files)} real LMU cells, paper model 224x224 fp32", [
        ("model only (preloaded tensors)", f"{ceiling:.1f} cells/s"),
        ("paper-style load_img + predict", f"{baseline:.1f} cells/s"),
        ("score-smears, 1 worker", f"{e2e_1:.1f} cells/s"),
        ("score-smears, 2 workers", f"{e2e_2:.1f} cells/s"),
        ("best e2e / model only", f"{best / ceiling:.2f}x"),
        ("best e2e / baseline", f"{best / baseline:.2f}x"),
    ])
    record(results)
    return results
