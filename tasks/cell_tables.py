"""A run's tables built on the Dask cluster from the shards' parts, never whole in one process.

Each ingest shard writes its decoding records as one Parquet part (:func:`records_frame`); these
functions turn the parts into the run's tables with Dask dataframes, by the same rules as
:func:`aml_model.catalog.build_cell_tables` and :func:`aml_model.aggregate.summarise_cohort`
applied to the whole run at once (tests/tasks/test_cell_tables.py checks that they are equal):

- the ingest's ``cells.parquet``: the records are shuffled by patient, so that a patient's
  duplicates meet in one partition, then returned to their shard's slot range, and written as a
  dataset of one part per shard (:func:`tasks.store.part_name`);
- the scoring's ``cells.parquet``: each part of the ingest's, with its probabilities read from Zarr;
- ``patients.parquet``: the scored cells shuffled by patient, each partition summarised per patient.

The flow calls the tasks that build them in its own process: their graphs run on the flow's
cluster (:mod:`tasks.dask_compute`), and only receipts, counts and one row per patient come back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from aml_model.aggregate import PATIENT_COLUMNS, summarise_patients
from aml_model.catalog import CELL_COLUMNS, quarantine_table, split_records
from aml_model.config import SummaryConfig
from tasks.dask_compute import compute, on_cluster, shuffle_partitions
from tasks.store import PROBABILITIES, Store, part_name

__all__ = [
    "RECORD_COLUMNS",
    "accepted_slots",
    "build_ingest_tables",
    "build_scored_tables",
    "records_frame",
]

#: The columns of an ingest shard's records part: one row per input of the shard.
RECORD_COLUMNS = (
    "zarr_index",
    "source_uri",
    "sha256",
    "reason",
    "patient_id",
    "label",
    "cell_type",
)


_RECEIPT_META = pd.DataFrame(
    {
        "url": pd.Series(dtype=object),
        "rows": pd.Series(dtype="int64"),
        "bytes": pd.Series(dtype="int64"),
        "sha256": pd.Series(dtype=object),
        "start": pd.Series(dtype="int64"),
        "stop": pd.Series(dtype="int64"),
    }
)


def records_frame(records: Sequence[dict]) -> pd.DataFrame:
    """Decoding records (zarr_index, source_uri, sha256, reason, patient_id, label, cell_type) as a
    frame with :data:`RECORD_COLUMNS` and the same types whatever the shard holds."""
    frame = pd.DataFrame(list(records), columns=list(RECORD_COLUMNS))
    return frame.astype(
        {
            "zarr_index": "int64",
            "source_uri": object,
            "sha256": object,
            "reason": object,
            "patient_id": object,
            "label": object,
            "cell_type": object,
        }
    )


def _accepted(records: pd.DataFrame) -> pd.DataFrame:
    return split_records(records)[0]


def _quarantined(records: pd.DataFrame) -> pd.DataFrame:
    return split_records(records)[1]


def build_ingest_tables(
    store: Store,
    record_parts: Sequence[dict],
    rejected: pd.DataFrame,
    cells_url: str,
    quarantine_url: str,
) -> tuple[list[dict], dict]:
    """Write the ingest's cell table as a dataset of one part per shard, and its quarantine
    (decoding failures, duplicates within a patient and ``rejected``) as one file; returns their
    receipts (:meth:`Store.write_part`).

    Args:
        record_parts: one receipt per ingest shard, in slot order, each with ``url`` (its records
            part), ``start`` and ``stop`` (its Zarr slots).
        rejected: inputs refused before decoding (source_uri, patient_id, reason).
        cells_url: the dataset's folder; whatever is there is replaced.
        quarantine_url: the quarantine: :data:`QUARANTINE_COLUMNS`, sorted by source_uri.

    Returns:
        ``(cell parts' receipts, quarantine's receipt)``.
    """
    import dask
    import dask.dataframe as dd

    with on_cluster() as (scheduler, shuffle):
        records = dd.from_map(store.read_table, [part["url"] for part in record_parts])
        # A patient's records meet in one partition: its duplicates are found there.
        patients = records.shuffle(
            "patient_id",
            npartitions=shuffle_partitions(records.npartitions),
            shuffle_method=shuffle,
        )
        cells = patients.map_partitions(_accepted, meta=_accepted(records._meta))
        quarantined = patients.map_partitions(_quarantined, meta=_quarantined(records._meta))
        divisions = [part["start"] for part in record_parts] + [record_parts[-1]["stop"]]
        # set_index's last division is inclusive; the others open each part's range.
        by_slot = cells.set_index(
            "zarr_index", divisions=[*divisions[:-1], divisions[-1] - 1], shuffle_method=shuffle
        )
        # Lists every partition indexes go into the graph once, as one key each partition's task
        # reads: passed as they are, every task would carry the whole list (quadratic in parts).
        bounds = dask.delayed([(part["start"], part["stop"]) for part in record_parts], pure=True)
        writes = by_slot.map_partitions(
            _write_cells_part, store, cells_url, bounds, meta=_RECEIPT_META
        )
        quarantine = quarantined.repartition(npartitions=1).map_partitions(
            _write_quarantine, store, quarantine_url, rejected, meta=_RECEIPT_META
        )
        store.remove(cells_url, recursive=True)
        receipts, quarantine_receipt = compute(scheduler, writes, quarantine)
    return receipts.to_dict(orient="records"), quarantine_receipt.to_dict(orient="records")[0]


def _write_quarantine(
    quarantined: pd.DataFrame, store: Store, url: str, rejected: pd.DataFrame
) -> pd.DataFrame:
    receipt = store.write_part(quarantine_table(quarantined, rejected), url)
    return pd.DataFrame([receipt | {"start": -1, "stop": -1}], columns=_RECEIPT_META.columns)


def _write_cells_part(
    partition: pd.DataFrame,
    store: Store,
    cells_url: str,
    bounds: list[tuple[int, int]],
    partition_info: dict | None = None,
) -> pd.DataFrame:
    if partition_info is None:  # dask's meta inference
        return _RECEIPT_META
    start, stop = bounds[partition_info["number"]]
    # Every part has the same types, a text column a string one even where a part holds no text
    # (a source's unlabelled patients): readers of the dataset (pyarrow, Dask) unify parts by type.
    cells = (
        partition.reset_index()
        .sort_values("zarr_index", kind="stable")[list(CELL_COLUMNS)]
        .astype({"zarr_index": "int64", "label": "str", "cell_type": "string"})
        .reset_index(drop=True)
    )
    receipt = store.write_part(cells, f"{cells_url.rstrip('/')}/{part_name(start, stop)}")
    return pd.DataFrame([receipt | {"start": start, "stop": stop}], columns=_RECEIPT_META.columns)


def _write_scored_part(
    partition: pd.DataFrame, store: Store, urls: list[str], partition_info: dict | None = None
) -> pd.DataFrame:
    if partition_info is None:
        return _RECEIPT_META
    receipt = store.write_part(partition, urls[partition_info["number"]])
    return pd.DataFrame([receipt | {"start": -1, "stop": -1}], columns=_RECEIPT_META.columns)


def accepted_slots(store: Store, table_url: str, start: int, stop: int) -> np.ndarray:
    """The Zarr slots in [start, stop) that a finished ingest accepted, sorted: read from the parts
    of its cell table that overlap the range, or from an older run's single table with a filter."""
    parts = store.table_parts(table_url)
    if not parts:
        sources = [table_url]
    else:
        sources = [
            url for url in parts if _part_range(url)[0] < stop and start < _part_range(url)[1]
        ]
    window = [("zarr_index", ">=", start), ("zarr_index", "<", stop)]
    slots = [
        store.read_table(url, filters=window, columns=["zarr_index"])["zarr_index"].to_numpy()
        for url in sources
    ]
    return np.sort(np.concatenate(slots)) if slots else np.zeros(0, np.int64)


def _part_range(url: str) -> tuple[int, int]:
    start, stop = url.rsplit("/", 1)[-1].removeprefix("part-").removesuffix(".parquet").split("-")
    return int(start), int(stop)


def build_scored_tables(
    store: Store,
    ingest_cells_url: str,
    probabilities_url: str,
    scored_url: str,
    quarantined: Mapping[str, int],
    config: SummaryConfig,
    model_version: str,
    extra_patients: tuple[str, ...],
    score,
    summarise_on: str = "probability",
) -> pd.DataFrame:
    """Write the scoring's cell table (the ingest's, part for part, with ``score``'s columns) and
    return the patient summaries, as :func:`summarise_cohort` makes them from the whole table.

    Args:
        ingest_cells_url: the ingest's cell table (a dataset, or an older run's single file).
        probabilities_url: the scoring's probabilities array.
        scored_url: the scoring's cell table, written as a dataset of the same parts.
        quarantined: the number of quarantined inputs of each patient that has any.
        extra_patients: patients known to exist without any input (empty folders).
        score: ``score(cells, probabilities, first_slot) -> scored cells``: a part's cells with
            their probability columns, given the probabilities of the slots from ``first_slot`` on
            (:func:`tasks.summarise.score_columns`).
        summarise_on: the column of the scored cells the patients are summarised on (a site's
            calibrated probability, where there is one).
    """
    import dask
    import dask.dataframe as dd

    parts = store.table_parts(ingest_cells_url)
    sources = parts or [ingest_cells_url]
    names = [url.rsplit("/", 1)[-1] for url in parts] or [part_name(0, 0)]
    urls = [f"{scored_url.rstrip('/')}/{name}" for name in names]
    with on_cluster() as (scheduler, shuffle):
        cells = dd.from_map(store.read_table, sources)
        scored = cells.map_partitions(
            _scored,
            store,
            probabilities_url,
            score,
            meta=score(cells._meta, np.zeros(0, np.float32), 0),
        )
        writes = scored.map_partitions(
            _write_scored_part, store, dask.delayed(urls, pure=True), meta=_RECEIPT_META
        )
        summary_columns = scored[["patient_id", "zarr_index", summarise_on]].rename(
            columns={summarise_on: "probability"}
        )
        summaries = summary_columns.shuffle(
            "patient_id",
            npartitions=shuffle_partitions(cells.npartitions),
            shuffle_method=shuffle,
        )
        # One copy of the counts in the graph, which every partition's summary reads.
        counts = dask.delayed(dict(quarantined), pure=True)
        rows = summaries.map_partitions(
            _summaries,
            counts,
            config,
            model_version,
            meta=_summaries(summary_columns._meta, {}, config, model_version),
        )
        store.remove(scored_url, recursive=True)
        _, summarised = compute(scheduler, writes, rows)
    seen = set(summarised["patient_id"])
    rest = summarise_patients(
        summary_columns._meta,
        {patient: n for patient, n in quarantined.items() if patient not in seen},
        config,
        model_version,
        extra_patients=tuple(p for p in extra_patients if p not in seen),
    )
    table = pd.concat([summarised, rest], ignore_index=True).sort_values("patient_id")
    # Rebuilt from its rows as summarise_cohort builds it, so that the types are its own too.
    return pd.DataFrame(table.to_dict(orient="records"), columns=list(PATIENT_COLUMNS))


def _scored(cells: pd.DataFrame, store: Store, probabilities_url: str, score) -> pd.DataFrame:
    if cells.empty:
        return score(cells, np.zeros(0, np.float32), 0)
    low, high = int(cells["zarr_index"].min()), int(cells["zarr_index"].max()) + 1
    return score(
        cells, store.open_cells_array(probabilities_url, name=PROBABILITIES)[low:high], low
    )


def _summaries(
    cells: pd.DataFrame, quarantined: Mapping[str, int], config: SummaryConfig, model_version: str
) -> pd.DataFrame:
    """The summaries of the patients with cells in ``cells``; a patient's cells in slot order, as in
    the whole table, so that its mean and median are computed over the same sequence."""
    ordered = cells.sort_values("zarr_index", kind="stable")
    patients = set(ordered["patient_id"])
    counts = {patient: n for patient, n in quarantined.items() if patient in patients}
    return summarise_patients(ordered, counts, config, model_version)
