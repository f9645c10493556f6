"""Labelled synthetic cells in two runs' cells.zarr, as load_training_set would list them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from aml_model.synthetic import render_cell
from tasks.store import Store


def write_runs(root: Path, cells_per_run: int = 24, size: int = 32, runs: int = 2) -> pd.DataFrame:
    """``runs`` cells.zarr arrays of ``cells_per_run`` cells each, blasts and others alternating.

    Returns:
        One row per cell: cell_id, sha256, label, cells_zarr, zarr_index, source.
    """
    rng = np.random.default_rng(0)
    store = Store(str(root))
    frames = []
    for run in range(runs):
        url = str(root / "runs" / f"run{run}" / "cells.zarr")
        labels = np.arange(cells_per_run) % 2
        images = np.stack([render_cell(bool(label), rng, size=size) for label in labels])
        store.create_cells_array(url, cells_per_run, size, 8)[:] = images
        frames.append(
            pd.DataFrame(
                {
                    "cell_id": [f"r{run}-{i}" for i in range(cells_per_run)],
                    "sha256": [hashlib.sha256(image.tobytes()).hexdigest() for image in images],
                    "label": np.where(labels == 1, "blast", "normal"),
                    "cells_zarr": url,
                    "zarr_index": np.arange(cells_per_run),
                    "source": f"run{run}",
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
