"""Join the scores to the cell table and summarise each patient, on the Dask cluster (:mod:`tasks.cell_tables`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from aml_model.aggregate import with_corrected_fraction
from aml_model.calibration import CALIBRATED_COLUMN, OperatingPoint, SiteCalibration
from aml_model.config import SummaryConfig
from tasks.cell_tables import build_scored_tables
from tasks.retry import store_task
from tasks.store_layout import ScoringPaths

__all__ = ["score_columns", "write_scored_tables"]


def score_columns(
    cells: pd.DataFrame,
    probabilities: np.ndarray,
    threshold: float,
    model_version: str,
    calibration: SiteCalibration | None = None,
    first_slot: int = 0,
) -> pd.DataFrame:
    """A new cell table with probability, predicted_label and model_version added.

    Args:
        cells: the ingest cell table (zarr_index per cell).
        probabilities: `(n_slots,)` float32 of the Zarr slots from ``first_slot`` on, NaN where
            nothing was scored.
        calibration: a site's calibration: adds probability_calibrated (float32), and
            predicted_label compares it, not the raw probability, with ``threshold``.
    """
    picked = probabilities[cells["zarr_index"].to_numpy() - first_slot]
    if np.isnan(picked).any():
        missing = cells.loc[np.isnan(picked), "cell_id"].tolist()[:5]
        message = (
            f"{int(np.isnan(picked).sum())} accepted cells have no probability (e.g. {missing})"
        )
        raise RuntimeError(message)
    called = picked if calibration is None else calibration.apply(picked).astype(np.float32)
    # A table scored before (with another calibration, or none) must not keep a stale column.
    scored = cells.drop(columns=[CALIBRATED_COLUMN], errors="ignore").assign(
        probability=picked.astype(np.float32),
        predicted_label=np.where(called >= threshold, "blast", "normal"),
        model_version=model_version,
    )
    return scored if calibration is None else scored.assign(**{CALIBRATED_COLUMN: called})


@store_task("summarise")
def write_scored_tables(
    paths: ScoringPaths,
    config: SummaryConfig,
    model_version: str,
    calibration: SiteCalibration | None = None,
    patient_versions: dict[str, str] | None = None,
    operating_point: OperatingPoint | None = None,
) -> pd.DataFrame:
    """Write the scoring's cells.parquet and patients.parquet; returns the patient table.

    Reads the ingest run's cell table, quarantine and report and the scoring's probabilities.
    With a site ``calibration`` the patients are summarised on the calibrated probabilities
    (``config.threshold`` is then the threshold of the site's ``operating_point`` on that scale),
    and the site's rates at that point add the corrected fraction columns
    (:data:`aml_model.aggregate.CORRECTED_COLUMNS`). ``patient_versions`` (patient_id -> hash of
    its image set, :mod:`tasks.arrivals`) becomes the patient_version column.
    """
    store = paths.store
    quarantine = store.read_table(paths.quarantine_table)
    report = store.read_json(paths.report)

    def score(cells: pd.DataFrame, probabilities: np.ndarray, first_slot: int) -> pd.DataFrame:
        return score_columns(
            cells, probabilities, config.threshold, model_version, calibration, first_slot
        )

    patients = build_scored_tables(
        store,
        paths.ingest_cells_table,
        paths.probabilities_zarr,
        paths.cells_table,
        quarantine["patient_id"].value_counts().to_dict(),
        config,
        model_version,
        tuple(report.get("empty_patients", ())),
        score,
        "probability" if calibration is None else CALIBRATED_COLUMN,
    )
    if operating_point is not None:
        patients = with_corrected_fraction(
            patients, operating_point.sensitivity, operating_point.false_positive_rate
        )
    patients["patient_version"] = patients["patient_id"].map(patient_versions or {})
    store.write_table(patients, paths.patients_table)
    return patients
