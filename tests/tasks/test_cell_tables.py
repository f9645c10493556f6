"""The tables built on Dask from the shards' parts equal what the whole-table rules make of them."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from aml_model.aggregate import summarise_cohort
from aml_model.calibration import CALIBRATED_COLUMN
from aml_model.catalog import build_cell_tables
from aml_model.config import SummaryConfig
from tasks import dask_compute
from tasks.cell_tables import (
    accepted_slots,
    build_ingest_tables,
    build_scored_tables,
    records_frame,
)
from tasks.store import PROBABILITIES, Store, part_name, table_bytes
from tasks.summarise import score_columns

SHARD = 64
REJECTED = pd.DataFrame(
    [
        {"source_uri": "s3://lab/P01/notes.txt", "patient_id": "P01", "reason": "not an image"},
        {"source_uri": "s3://lab/Q00/x.png", "patient_id": "Q00", "reason": "outside the root"},
    ]
)


def as_read(frame: pd.DataFrame) -> pd.DataFrame:
    """A table as a reader gets it back from Parquet: how today's single-file tables are compared."""
    return pd.read_parquet(io.BytesIO(table_bytes(frame)))


def synthetic_records(n: int, seed: int = 0) -> list[dict]:
    """Decoding records in which patients span shards, some images repeat within a patient (in
    other shards too), some failed, and one image is shared by two patients."""
    rng = np.random.default_rng(seed)
    patients = np.sort(rng.choice([f"P{i:02d}" for i in range(30)], n))
    rng.shuffle(patients[: n // 3])  # a manifest's order: patients interleaved
    records = []
    for slot, patient in enumerate(patients):
        failed = rng.random() < 0.03
        records.append(
            {
                "zarr_index": slot,
                "source_uri": f"s3://lab/{patient}/{slot}.png",
                "sha256": None if failed else f"{rng.integers(0, n // 2):064x}",
                "reason": "not an image: cannot identify image file" if failed else None,
                "patient_id": str(patient),
                "label": ["blast", "normal", None][slot % 3],
                "cell_type": [None, "MYO", "NGS"][slot % 3],
            }
        )
    return records


def write_record_parts(store: Store, records: list[dict]) -> list[dict]:
    parts = []
    for start in range(0, len(records), SHARD):
        shard = records[start : start + SHARD]
        receipt = store.write_part(records_frame(shard), store.path(f"shards/{start}.parquet"))
        parts.append(receipt | {"start": start, "stop": start + len(shard)})
    return parts


# Shards per output partition of the shuffles by patient: several partitions (a patient's rows
# from parts that land in different ones must meet), and the default.
@pytest.fixture(params=[3, dask_compute.SHUFFLE_FAN_IN], ids=lambda fan_in: f"fan-in-{fan_in}")
def ingested(tmp_path, request, monkeypatch):
    """A store with 1,000 inputs' records parts and the cell tables built from them."""
    monkeypatch.setattr(dask_compute, "SHUFFLE_FAN_IN", request.param)
    store = Store(str(tmp_path / "store"))
    records = synthetic_records(1000)
    parts = write_record_parts(store, records)
    receipts, receipt = build_ingest_tables(
        store, parts, REJECTED, store.path("cells.parquet"), store.path("quarantine.parquet")
    )
    quarantine = store.read_table(store.path("quarantine.parquet"))
    assert receipt["rows"] == len(quarantine)
    return store, records, receipts, quarantine


def test_ingest_tables_from_parts_equal_the_whole_table_rules(ingested):
    store, records, receipts, quarantine = ingested
    cells_ref, quarantine_ref = build_cell_tables(records_frame(records), REJECTED)
    assert len(quarantine_ref) > 40 and quarantine_ref["reason"].str.startswith("duplicate").any()
    pd.testing.assert_frame_equal(store.read_table(store.path("cells.parquet")), as_read(cells_ref))
    pd.testing.assert_frame_equal(quarantine, as_read(quarantine_ref))
    # One part per shard, named by its slots, each with its receipt.
    assert [r["url"].rsplit("/", 1)[-1] for r in receipts] == [
        part_name(start, min(start + SHARD, 1000)) for start in range(0, 1000, SHARD)
    ]
    assert store.table_parts(store.path("cells.parquet")) == [r["url"] for r in receipts]
    assert sum(r["rows"] for r in receipts) == len(cells_ref)
    for receipt in receipts:
        part = store.read_table(receipt["url"])
        assert part["zarr_index"].between(receipt["start"], receipt["stop"] - 1).all()


def test_a_rebuild_replaces_every_part(ingested):
    store, records, _, _ = ingested
    stale = store.path("cells.parquet", part_name(5000, 5064))
    store.write_bytes(stale, b"left by a run killed in mid-write")
    parts = write_record_parts(store, records)
    build_ingest_tables(
        store, parts, REJECTED, store.path("cells.parquet"), store.path("q.parquet")
    )
    assert stale not in store.table_parts(store.path("cells.parquet"))


@pytest.mark.parametrize("calibrated", [False, True])
def test_scored_tables_and_summaries_equal_the_whole_table_rules(ingested, calibrated):
    store, records, _, quarantine = ingested
    cells_ref, quarantine_ref = build_cell_tables(records_frame(records), REJECTED)
    probabilities = np.random.default_rng(1).random(len(records)).astype(np.float32)
    store.create_probabilities_array(store.path("p.zarr"), len(records), SHARD)
    store.open_cells_array(store.path("p.zarr"), PROBABILITIES, read_only=False)[:] = probabilities
    config = SummaryConfig(min_cells=20, threshold=0.6)

    class Halved:
        """A stand-in site calibration: the summaries use its column, the table keeps both."""

        def apply(self, values):
            return values / 2

    calibration = Halved() if calibrated else None

    def score(cells, window, first_slot):
        return score_columns(cells, window, config.threshold, "v1", calibration, first_slot)

    column = CALIBRATED_COLUMN if calibrated else "probability"
    patients = build_scored_tables(
        store,
        store.path("cells.parquet"),
        store.path("p.zarr"),
        store.path("scored.parquet"),
        quarantine["patient_id"].value_counts().to_dict(),
        config,
        "v1",
        ("P98", "P99"),
        score,
        column,
    )
    scored_ref = score_columns(cells_ref, probabilities, config.threshold, "v1", calibration)
    patients_ref = summarise_cohort(
        scored_ref.assign(probability=scored_ref[column]),
        quarantine_ref,
        config,
        "v1",
        extra_patients=("P98", "P99"),
    )
    pd.testing.assert_frame_equal(
        store.read_table(store.path("scored.parquet")), as_read(scored_ref)
    )
    pd.testing.assert_frame_equal(patients, patients_ref)
    assert {"Q00", "P98", "P99"} <= set(patients["patient_id"]), "patients without a scored cell"
    assert set(patients["call"]) >= {"INSUFFICIENT_CELLS"} and patients["n_scored"].sum() == len(
        cells_ref
    )


def test_an_older_runs_single_table_is_scored_and_read_as_before(ingested):
    store, records, _, quarantine = ingested
    cells = store.read_table(store.path("cells.parquet"))
    store.write_table(cells, store.path("old-cells.parquet"))
    probabilities = np.linspace(0, 1, len(records), dtype=np.float32)
    store.create_probabilities_array(store.path("p.zarr"), len(records), SHARD)
    store.open_cells_array(store.path("p.zarr"), PROBABILITIES, read_only=False)[:] = probabilities
    config = SummaryConfig(min_cells=20)

    def score(part, window, first_slot):
        return score_columns(part, window, config.threshold, "v1", first_slot=first_slot)

    patients = build_scored_tables(
        store,
        store.path("old-cells.parquet"),
        store.path("p.zarr"),
        store.path("scored.parquet"),
        quarantine["patient_id"].value_counts().to_dict(),
        config,
        "v1",
        (),
        score,
    )
    scored_ref = score_columns(cells, probabilities, config.threshold, "v1")
    pd.testing.assert_frame_equal(store.read_table(store.path("scored.parquet")), scored_ref)
    pd.testing.assert_frame_equal(patients, summarise_cohort(scored_ref, quarantine, config, "v1"))


def test_accepted_slots_of_a_range_from_a_dataset_and_from_an_older_single_table(ingested):
    store, _, _, _ = ingested
    cells = store.read_table(store.path("cells.parquet"))
    store.write_table(cells, store.path("old-cells.parquet"))
    for start, stop in [(0, 64), (100, 300), (960, 1000), (2000, 2064)]:
        expected = np.sort(cells.loc[cells["zarr_index"].between(start, stop - 1), "zarr_index"])
        for table in ("cells.parquet", "old-cells.parquet"):
            found = accepted_slots(store, store.path(table), start, stop)
            np.testing.assert_array_equal(found, expected)
