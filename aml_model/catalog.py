"""Turn per-input decode records into the run's cell and quarantine tables."""

from __future__ import annotations

import pandas as pd

__all__ = ["CELL_COLUMNS", "QUARANTINE_COLUMNS", "build_cell_tables", "cell_id"]

CELL_COLUMNS = ("cell_id", "patient_id", "source_uri", "sha256", "label", "zarr_index", "cell_type")
QUARANTINE_COLUMNS = ("source_uri", "patient_id", "reason")


def cell_id(patient_id: str, sha256: str) -> str:
    """A stable cell id: the same image of the same patient always gets the same id."""
    return f"{patient_id}:{sha256[:16]}"


def build_cell_tables(
    records: pd.DataFrame, rejected: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split decode records into accepted cells and quarantined inputs.

    Within a patient, an image whose sha256 was already seen is a duplicate: it is
    quarantined with a reason naming the first copy and not scored twice.

    Args:
        records: one row per decoded input, in Zarr slot order, with columns zarr_index,
            source_uri, patient_id, label, sha256 (None when decoding failed) and reason
            (None when it succeeded); cell_type (None when unknown) is optional.
        rejected: inputs refused before decoding (source_uri, patient_id, reason).

    Returns:
        ``(cells, quarantine)`` with the columns :data:`CELL_COLUMNS` and
        :data:`QUARANTINE_COLUMNS`; cells sorted by zarr_index, quarantine by source_uri.
    """
    records = records.sort_values("zarr_index", kind="stable")
    failed = records[records["reason"].notna()]
    decoded = records[records["reason"].isna()]
    first = decoded.drop_duplicates(["patient_id", "sha256"], keep="first")
    duplicates = decoded.loc[decoded.index.difference(first.index)]
    originals = first.set_index(["patient_id", "sha256"])["source_uri"]
    duplicate_reasons = [
        f"duplicate of {originals.loc[(row.patient_id, row.sha256)]} (same sha256) in patient {row.patient_id}"
        for row in duplicates.itertuples()
    ]
    quarantine = pd.concat(
        [
            failed[list(QUARANTINE_COLUMNS)],
            duplicates[["source_uri", "patient_id"]].assign(reason=duplicate_reasons),
            rejected if rejected is not None else pd.DataFrame(columns=list(QUARANTINE_COLUMNS)),
        ],
        ignore_index=True,
    )
    quarantine = quarantine.astype({"source_uri": str, "patient_id": str, "reason": str})
    cells = first.assign(
        cell_id=[cell_id(p, s) for p, s in zip(first["patient_id"], first["sha256"], strict=True)]
    )
    if "cell_type" not in cells:
        cells = cells.assign(cell_type=None)
    cells = (
        cells[list(CELL_COLUMNS)]
        .astype({"zarr_index": "int64", "cell_type": "string"})
        .reset_index(drop=True)
    )
    return cells, quarantine.sort_values("source_uri", kind="stable").reset_index(drop=True)
