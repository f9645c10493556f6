import pandas as pd

from aml_model.catalog import CELL_COLUMNS, QUARANTINE_COLUMNS, build_cell_tables, cell_id


def test_failures_and_duplicates_are_quarantined_and_cells_keep_their_slots():
    records = pd.DataFrame(
        [
            {
                "zarr_index": 0,
                "source_uri": "a/1.png",
                "patient_id": "a",
                "label": "blast",
                "sha256": "s1",
                "reason": None,
            },
            {
                "zarr_index": 1,
                "source_uri": "a/2.png",
                "patient_id": "a",
                "label": None,
                "sha256": None,
                "reason": "empty file (0 bytes)",
            },
            {
                "zarr_index": 2,
                "source_uri": "a/3.png",
                "patient_id": "a",
                "label": "blast",
                "sha256": "s1",
                "reason": None,
            },
            {
                "zarr_index": 3,
                "source_uri": "b/1.png",
                "patient_id": "b",
                "label": "normal",
                "sha256": "s1",
                "reason": None,
            },
        ]
    )
    rejected = pd.DataFrame(
        [{"source_uri": "../x.png", "patient_id": "b", "reason": "path escapes the manifest root"}]
    )
    cells, quarantine = build_cell_tables(records, rejected)
    assert tuple(cells.columns) == CELL_COLUMNS and tuple(quarantine.columns) == QUARANTINE_COLUMNS
    assert cells["zarr_index"].tolist() == [0, 3]
    assert cells["cell_id"].tolist() == [cell_id("a", "s1"), cell_id("b", "s1")]
    reasons = dict(zip(quarantine["source_uri"], quarantine["reason"], strict=True))
    assert reasons == {
        "../x.png": "path escapes the manifest root",
        "a/2.png": "empty file (0 bytes)",
        "a/3.png": "duplicate of a/1.png (same sha256) in patient a",
    }


def test_cells_carry_their_cell_type_as_strings_null_when_unknown():
    records = pd.DataFrame(
        [
            {
                "zarr_index": 0,
                "source_uri": "a/1.png",
                "patient_id": "a",
                "label": "blast",
                "cell_type": "myeloblast",
                "sha256": "s1",
                "reason": None,
            },
            {
                "zarr_index": 1,
                "source_uri": "a/2.png",
                "patient_id": "a",
                "label": None,
                "cell_type": None,
                "sha256": "s2",
                "reason": None,
            },
        ]
    )
    cells, _ = build_cell_tables(records)
    assert cells["cell_type"].tolist()[0] == "myeloblast" and pd.isna(cells["cell_type"].iloc[1])
    assert isinstance(cells["cell_type"].dtype, pd.StringDtype)
    untyped, _ = build_cell_tables(records.drop(columns="cell_type"))
    assert tuple(untyped.columns) == CELL_COLUMNS and untyped["cell_type"].isna().all()
