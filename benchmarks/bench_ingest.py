"""Ingest throughput (decode -> Zarr -> Parquet) on the real LMU cells, 1 vs 2 Dask workers,
and where a cell's CPU time goes.

Each configuration ingests every LMU cell into a fresh store on its own LocalCluster; the
clock covers the flow run, not the cluster's start. Reported as cells/s and the 2-worker over
1-worker ratio, measured in the same run.

The breakdown times each step of ingesting a cell in this process, over the same cells: reading
the file, its sha256, ``decode_cell`` (decode, checks, resize), a plain Pillow decode + resize
for reference (what ``decode_cell`` did before it resized in Pillow and let libjpeg scale), Zarr
encode + write and read, and the Parquet tables; the rest of the 1-worker flow's time per cell
is Prefect's and Dask's per-task and per-flow overhead.
"""

from __future__ import annotations

import tempfile
import time


def measure(n_workers: int, source: str) -> tuple[float, int]:
    """cells/s of one ingest of ``source`` on ``n_workers`` workers, and the cells it ingested."""
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    from flows.ingest import ingest
    from flows.runner import local_cluster_kwargs

    with (
        tempfile.TemporaryDirectory() as store,
        LocalCluster(**local_cluster_kwargs(n_workers)) as cluster,
    ):
        runner = DaskTaskRunner(address=cluster.scheduler_address)
        started = time.perf_counter()
        result = ingest.with_options(task_runner=runner)(source=source, store=store, layout="class")
        elapsed = time.perf_counter() - started
    return result["cells"] / elapsed, result["cells"]


def cell_costs(files: list, image_size: int = 224) -> dict[str, float]:
    """Milliseconds per cell of each ingest step, timed over ``files`` in this process."""
    import hashlib
    import io

    import numpy as np
    import pandas as pd
    from PIL import Image

    from aml_model.config import PreprocessConfig
    from aml_model.preprocess import decode_cell
    from tasks.store import Store

    config, n = PreprocessConfig(image_size=image_size), len(files)

    def per_cell(step):
        started = time.perf_counter()
        out = step()
        return (time.perf_counter() - started) / n * 1000, out

    def plain(data):
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(
                image.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
            )

    costs = {}
    costs["read"], datas = per_cell(lambda: [f.read_bytes() for f in files])
    costs["sha256"], digests = per_cell(lambda: [hashlib.sha256(d).hexdigest() for d in datas])
    costs["decode_plain_pillow"], _ = per_cell(lambda: [plain(d) for d in datas])
    costs["decode"], cells = per_cell(
        lambda: np.stack(
            [decode_cell(d, str(f), config) for d, f in zip(datas, files, strict=True)]
        )
    )
    with tempfile.TemporaryDirectory() as folder:
        store = Store(folder)
        array = store.create_cells_array(store.path("cells.zarr"), n, image_size, 64)
        costs["zarr_write"], _ = per_cell(lambda: array.__setitem__(slice(0, n), cells))
        costs["zarr_read"], _ = per_cell(lambda: array[:])
        table = pd.DataFrame(
            {
                "cell_id": digests,
                "sha256": digests,
                "source_uri": [str(f) for f in files],
                "zarr_index": np.arange(n),
            }
        )
        costs["parquet"], _ = per_cell(
            lambda: store.write_table(table, store.path("cells.parquet"))
        )
    return costs


def main(context: dict) -> dict:
    from pathlib import Path

    from benchmarks.common import print_table, record, require_lmu_cells

    source = str(require_lmu_cells())
    one, cells = measure(1, source)
    two, _ = measure(2, source)
    costs = cell_costs(sorted(Path(source).rglob("*.jpg")))
    work = sum(v for k, v in costs.items() if k not in ("decode_plain_pillow", "zarr_read"))
    costs["task_overhead"] = max(0.0, 1000 / one - work)
    results = {
        "ingest_1w_cells_per_s": one,
        "ingest_2w_cells_per_s": two,
        "ingest_2w_over_1w": two / one,
        **{f"ingest_ms_per_cell_{step}": ms for step, ms in costs.items()},
        "decode_over_plain_pillow": costs["decode"] / costs["decode_plain_pillow"],
    }
    print_table(
        f"ingest of {cells:,} real LMU cells (decode + resize + Zarr + Parquet)",
        [
            ("1 worker", f"{one:.1f} cells/s"),
            ("2 workers", f"{two:.1f} cells/s"),
            ("2w / 1w", f"{two / one:.2f}x"),
            *((f"ms per cell: {step}", f"{ms:.2f}") for step, ms in costs.items()),
            (
                "decode_cell / plain Pillow decode + resize",
                f"{results['decode_over_plain_pillow']:.2f}x",
            ),
        ],
    )
    record(results)
    return results
