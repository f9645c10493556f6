"""Ingest throughput (decode -> Zarr -> Parquet) on the real LMU cells, 1 vs 2 Dask workers.

Each configuration ingests every LMU cell into a fresh store on its own LocalCluster; the
clock covers the flow run, not the cluster's start. Reported as cells/s and the 2-worker over
1-worker ratio, measured in the same run.
"""

from __future__ import annotations

import tempfile
import time


def measure(n_workers: int, source: str) -> tuple[float, int]:
    """cells/s of one ingest of ``source`` on ``n_workers`` workers, and the cells it ingested."""
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    from flows.runner import local_cluster_kwargs

    from flows.ingest import ingest

    with tempfile.TemporaryDirectory() as store, LocalCluster(**local_cluster_kwargs(n_workers)) as cluster:
        runner = DaskTaskRunner(address=cluster.scheduler_address)
        started = time.perf_counter()
        result = ingest.with_options(task_runner=runner)(source=source, store=store, layout="class")
        elapsed = time.perf_counter() - started
    return result["cells"] / elapsed, result["cells"]


def main(context: dict) -> dict:
    from benchmarks.common import print_table, record, require_lmu_cells

    source = str(require_lmu_cells())
    one, cells = measure(1, source)
    two, _ = measure(2, source)
    results = {"ingest_1w_cells_per_s": one, "ingest_2w_cells_per_s": two, "ingest_2w_over_1w": two / one}
    print_table(f"ingest of {cells:,} real LMU cells (decode + resize + Zarr + Parquet)", [
        ("1 worker", f"{one:.1f} cells/s"), ("2 workers", f"{two:.1f} cells/s"), ("2w / 1w", f"{two / one:.2f}x"),
    ])
    record(results)
    return results
