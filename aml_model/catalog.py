"""Turn per-input decode records into the run's cell and quarantine tables."""

from __future__ import annotations

import pandas as pd

__all__ = [
    "CELL_COLUMNS",
    "QUARANTINE_COLUMNS",
    "build_cell_tables",
    "cell_id",
    "quarantine_table",
    "split_records",
]

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
    cells, quarantined = split_records(records)
    return cells, quarantine_table(quarantined, rejected)


def split_records(records: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`build_cell_tables`' first half: the accepted cells, and the quarantined inputs in the
    order that :func:`quarantine_table` restores.

    Duplicates are found within a patient, so the records of whole patients can be split apart
    from the others' and the results concatenated.

    Returns:
        ``(cells, quarantined)``: cells as :func:`build_cell_tables` returns them; quarantined
        inputs with :data:`QUARANTINE_COLUMNS` plus ``stage`` (0 failed decoding, 1 duplicate) and
        ``zarr_index``.
    """
    # A fresh index: records gathered from several parts repeat index labels.
    records = records.sort_values("zarr_index", kind="stable").reset_index(drop=True)
    failed = records[records["reason"].notna()]
    decoded = records[records["reason"].isna()]
    first = decoded.drop_duplicates(["patient_id", "sha256"], keep="first")
    duplicates = decoded.loc[decoded.index.difference(first.index)]
    originals = first.set_index(["patient_id", "sha256"])["source_uri"]
    duplicate_reasons = [
        f"duplicate of {originals.loc[(row.patient_id, row.sha256)]} (same sha256) in patient {row.patient_id}"
        for row in duplicates.itertuples()
    ]
    quarantined = pd.concat(
        [
            failed[[*QUARANTINE_COLUMNS, "zarr_index"]].assign(stage=0),
            duplicates[["source_uri", "patient_id", "zarr_index"]].assign(
                reason=duplicate_reasons, stage=1
            ),
        ],
        ignore_index=True,
    )[[*QUARANTINE_COLUMNS, "stage", "zarr_index"]]
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
    return cells, quarantined.astype({"stage": "int64", "zarr_index": "int64"})


def quarantine_table(
    quarantined: pd.DataFrame, rejected: pd.DataFrame | None = None
) -> pd.DataFrame:
    """:func:`build_cell_tables`' quarantine from :func:`split_records`' quarantined inputs (of any
    patients, in any order) and the inputs ``rejected`` before decoding.

    Returns:
        :data:`QUARANTINE_COLUMNS`, sorted by source_uri; ties in the order decoding failures,
        duplicates (each in slot order), then ``rejected`` as given.
    """
    ordered = quarantined.sort_values(["stage", "zarr_index"], kind="stable")
    quarantine = pd.concat(
        [
            ordered[list(QUARANTINE_COLUMNS)],
            rejected if rejected is not None else pd.DataFrame(columns=list(QUARANTINE_COLUMNS)),
        ],
        ignore_index=True,
    )
    quarantine = quarantine.astype({"source_uri": str, "patient_id": str, "reason": str})
    return quarantine.sort_values("source_uri", kind="stable").reset_index(drop=True)
