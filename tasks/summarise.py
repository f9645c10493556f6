"""Join the scores to the cell table and summarise each patient."""

from __future__ import annotations

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from aml_model.aggregate import summarise_cohort
from aml_model.config import SummaryConfig
from tasks import storage
from tasks.retry import retry_transient_errors

__all__ = ["score_columns", "write_scored_tables"]


def score_columns(cells: pd.DataFrame, probabilities: np.ndarray, threshold: float, model_version: str) -> pd.DataFrame:
    """A new cell table with probability, predicted_label and model_version added.

    Args:
        cells: the ingest cell table (zarr_index per cell).
        probabilities: `(n_slots,)` float32 from cells.zarr, NaN where nothing was scored.
    """
    picked = probabilities[cells["zarr_index"].to_numpy()]
    if np.isnan(picked).any():
        missing = cells.loc[np.isnan(picked), "cell_id"].tolist()[:5]
        message = f"{int(np.isnan(picked).sum())} accepted cells have no probability (e.g. {missing})"
        raise RuntimeError(message)
    return cells.assign(
        probability=picked.astype(np.float32),
        predicted_label=np.where(picked >= threshold, "blast", "normal"),
        model_version=model_version,
    )


@task(name="summarise", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
      retry_condition_fn=retry_transient_errors)
def write_scored_tables(
    paths: storage.RunPaths,
    config: SummaryConfig,
    model_version: str,
    store_options: dict,
) -> pd.DataFrame:
    """Write the scored cells.parquet and patients.parquet; returns the patient table."""
    cells = storage.read_table(paths.cells_table, store_options)
    quarantine = storage.read_table(paths.quarantine_table, store_options)
    probabilities = storage.open_cells_array(paths.cells_zarr, store_options, name=storage.PROBABILITIES)[:]
    scored = score_columns(cells, probabilities, config.threshold, model_version)
    report = storage.read_json(paths.report, store_options)
    patients = summarise_cohort(scored, quarantine, config, model_version,
                                extra_patients=tuple(report.get("empty_patients", ())))
    storage.write_table(scored, paths.cells_table, store_options)
    storage.write_table(patients, paths.patients_table, store_options)
    return patients
