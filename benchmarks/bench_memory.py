"""Peak resident memory per Dask worker while scoring 500 and 5,000 cells: it should not grow.

Each size runs ``score-smears`` on a fresh 2-worker LocalCluster and reads every worker's peak
RSS (``ru_maxrss``) before the cluster closes. 5,000 cells are more than the 1,400 real ones, so
the real cells are dealt to patient folders repeatedly (a patient never gets the same cell twice,
which ingest would quarantine as a duplicate). The model is the paper architecture at a smaller
input (default 96 px, untrained backbone) to keep the run to minutes: memory that grows with the
cohort would show at any input size.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

SIZES = tuple(int(n) for n in os.environ.get("AML_SMEAR_BENCH_MEMORY_CELLS", "500,5000").split(","))
IMAGE_SIZE = int(os.environ.get("AML_SMEAR_BENCH_MEMORY_IMAGE_SIZE", "96"))
CELLS_PER_PATIENT = 500


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
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def peak_rss_mb(source: Path, store: Path, model_file: str) -> float:
    """The largest worker peak RSS (MiB) of one score-smears run on a fresh 2-worker cluster."""
    from distributed import Client, LocalCluster
    from prefect_dask import DaskTaskRunner

    from flows.runner import local_cluster_kwargs
    from flows.score import score_smears

    with LocalCluster(**local_cluster_kwargs(2)) as cluster, Client(cluster) as client:
        runner = DaskTaskRunner(address=cluster.scheduler_address)
        score_smears.with_options(task_runner=runner)(source=str(source), store=str(store), model=model_file,
                                                      explain=False)
        return max(client.run(_worker_peak_rss_mb).values())


def main(context: dict) -> dict:
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
    print_table(f"peak RSS per worker, score-smears, {IMAGE_SIZE}x{IMAGE_SIZE} model, 2 workers", [
        *((f"{n:,} cells", f"{peak:.0f} MiB") for n, peak in peaks.items()),
        (f"{large:,} / {small:,}", f"{peaks[large] / peaks[small]:.2f}x"),
    ])
    return record(results)
