"""Concurrent and repeated scoring runs into one store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.store import Store
from tests.reliability.conftest import (
    SCORE_PARAMS,
    assert_same_tables,
    kill_group,
    read_tables,
    start_score_process,
    wait_for,
)

pytestmark = pytest.mark.reliability


def test_two_runs_at_once_do_not_interfere_and_repeat_runs_are_identical(
    cohort, cluster, clean_run, tiny_model_file, tmp_path
):
    """Two flow processes score the same source into one store at once, under different run ids.

    Each ends complete with exactly the clean run's tables (no cross-talk), and the two complete
    runs of the same source and model have identical cells.parquet and patients.parquet frames.
    """
    store = tmp_path / "store"
    runs = ("night-1", "night-2")
    processes = [
        start_score_process(
            cluster.scheduler_address,
            tmp_path / f"{run}.log",
            source=str(cohort),
            store=str(store),
            model=str(tiny_model_file),
            run_id=run,
            **SCORE_PARAMS,
        )
        for run in runs
    ]
    try:
        wait_for(lambda: all(p.poll() is not None for p in processes), 400, "both scoring runs")
    finally:
        for process in processes:
            kill_group(process)
    for run, process in zip(runs, processes, strict=True):
        assert process.returncode == 0, (tmp_path / f"{run}.log").read_text()[-4000:]

    scored = Store(str(store))
    first, second = (read_tables(scored, run) for run in runs)
    for tables in (first, second):
        assert_same_tables(tables, clean_run[2])
    # Idempotence: the same source and model give the same frames (the writer adds no timestamps).
    pd.testing.assert_frame_equal(first[0], second[0])
    pd.testing.assert_frame_equal(first[1], second[1])
    images = [scored.open_cells_array(scored.run(run).cells_zarr)[:] for run in runs]
    np.testing.assert_array_equal(images[0], images[1])
