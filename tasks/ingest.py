"""Ingest tasks: decode one shard of inputs into its own Zarr chunks, then write the tables."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait

import numpy as np
import pandas as pd
from prefect import get_run_logger

from aml_model.config import PreprocessConfig
from aml_model.errors import ImageDecodeError
from aml_model.preprocess import decode_cell
from tasks.cell_tables import build_ingest_tables, records_frame
from tasks.discover import CellInput
from tasks.retry import store_task
from tasks.store import Store
from tasks.store_layout import RunPaths

__all__ = [
    "INPUT_COLUMNS",
    "ShardSpec",
    "ingest_shard",
    "plan_hash",
    "plan_shards",
    "read_inputs",
    "shard_stop",
    "write_ingest_tables",
]


#: Inputs a process decodes at a time (its decoding tasks share them). An object store answers each
#: read after tens of milliseconds, and reading, hashing and Pillow's decoding release the GIL, so
#: threads hide that latency, and on a local disk use a core that the worker's other work leaves idle.
DECODE_THREADS = 4

# Thread pools kept for the life of the process (a Dask worker's), by name and process: threads are
# started once, not for every shard. On Python 3.11, starting a thread while Dask's statistical
# profiler reads every thread's frames can deadlock the whole worker (CPython gh-106883, dask/distributed
# #8616): a CI worker hung so, with a decoding pool and a writer started for each shard.
_POOLS: dict[tuple[str, int], ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(name: str, threads: int) -> ThreadPoolExecutor:
    """This process's pool ``name`` of ``threads`` threads (a forked child makes its own)."""
    key = (name, os.getpid())
    with _POOLS_LOCK:
        if key not in _POOLS:
            _POOLS[key] = ThreadPoolExecutor(threads, thread_name_prefix=name)
        return _POOLS[key]


def plan_hash(inputs: list[CellInput], image_size: int, chunk_cells: int) -> str:
    """A fingerprint of what an ingest will write: inputs, their order, size and chunking.

    A cell type is part of its input, so a changed type is a changed input; inputs without a
    type hash as before cell types existed, so the runs of such sources keep their ids.
    """
    payload = json.dumps(
        [
            [c.uri, c.patient_id, c.label] + ([c.cell_type] if c.cell_type is not None else [])
            for c in inputs
        ]
        + [image_size, chunk_cells]
    )
    return hashlib.sha256(payload.encode()).hexdigest()


#: The columns of a listing's input table (:mod:`tasks.listing`), one row per input in slot order.
INPUT_COLUMNS = ("uri", "patient_id", "label", "cell_type")

ShardSpec = dict
"""One decoding shard: ``{"shard": int, "start": int, "stop": int, "inputs": url}``, the slots
[start, stop) and the input table (:mod:`tasks.listing`) whose rows [start, stop) it decodes."""


def plan_shards(
    n_inputs: int, inputs_url: str, chunk_cells: int, chunks_per_shard: int = 1
) -> list[ShardSpec]:
    """Cut the slots of ``n_inputs`` inputs into shards aligned to Zarr chunks, so no two shards
    share a chunk."""
    size = chunk_cells * chunks_per_shard
    return [
        {"shard": number, "start": start, "stop": min(start + size, n_inputs), "inputs": inputs_url}
        for number, start in enumerate(range(0, n_inputs, size))
    ]


def shard_stop(spec: ShardSpec) -> int:
    """The slot after a shard's last."""
    return spec["stop"]


def read_inputs(store: Store, inputs_url: str, start: int, stop: int) -> pd.DataFrame:
    """Rows [start, stop) of an input table, reading only the row groups that hold them."""
    import pyarrow.parquet as pq

    fs, path = store.resolve(inputs_url)
    with fs.open(path, "rb") as handle:
        table_file = pq.ParquetFile(handle)
        groups, first, offset = [], 0, 0
        for group in range(table_file.num_row_groups):
            rows = table_file.metadata.row_group(group).num_rows
            if offset < stop and start < offset + rows:
                first = offset if not groups else first
                groups.append(group)
            offset += rows
        frame = table_file.read_row_groups(groups).to_pandas() if groups else None
    if frame is None:
        return pd.DataFrame(columns=list(INPUT_COLUMNS), dtype=object)
    return frame.iloc[start - first : stop - first].reset_index(drop=True)


def _decode_one(
    uri: str, source: Store, config: PreprocessConfig
) -> tuple[np.ndarray | None, dict]:
    try:
        data = source.read_bytes(uri)
    except FileNotFoundError:
        return None, {"sha256": None, "reason": "file not found"}
    except PermissionError as exc:
        return None, {"sha256": None, "reason": f"unreadable file: {exc.strerror or exc}"}
    except IsADirectoryError:
        return None, {"sha256": None, "reason": "a folder with an image name"}
    try:
        cell = decode_cell(data, uri, config)
    except ImageDecodeError as exc:
        return None, {"sha256": None, "reason": exc.reason}
    return cell, {"sha256": hashlib.sha256(data).hexdigest(), "reason": None}


@store_task("ingest-shard")
def ingest_shard(
    spec: ShardSpec,
    cells_url: str,
    marker_url: str,
    fingerprint: str,
    image_size: int,
    source: Store,
    store: Store,
) -> dict:
    """Decode the shard's inputs (:data:`DECODE_THREADS` at a time), write its whole Zarr chunks and
    its records part; skip if done.

    Each chunk is written as soon as its cells are decoded, while the threads decode the next: the
    write (compressing 64 cells) no longer waits for the whole shard.

    A bad input becomes a record with a reason and a zero slot; the others go on. The records
    (zarr_index, source_uri, sha256, reason, patient_id, label, cell_type per input,
    :func:`tasks.cell_tables.records_frame`) are written beside the marker as a Parquet part; the
    marker, written last, holds the part's receipt and makes a rerun of the same plan skip this
    shard. The inputs are read through ``source``; everything else is written through ``store``.

    Returns:
        The receipt: the shard's slots (start, stop), counts of inputs and of failed decodings,
        and its records part (url, rows, bytes, sha256): a few hundred bytes, whatever the shard's
        size, so that the flow never holds a record per cell.
    """
    start, stop = spec["start"], spec["stop"]
    rows = read_inputs(store, spec["inputs"], start, stop)
    shard = {
        "start": start,
        "uris": rows["uri"].tolist(),
        "patients": rows["patient_id"].tolist(),
        "labels": [_text(v) for v in rows["label"]],
        "cell_types": [_text(v) for v in rows["cell_type"]],
    }
    inputs = _inputs_digest(shard)
    if store.exists(marker_url):
        marker = store.read_json(marker_url)
        # Shards are numbered by position: a rerun with other chunks_per_task finds markers of
        # other slot ranges under the same names.
        if marker.get("plan") == fingerprint and marker.get("inputs") == inputs:
            return marker["receipt"]
    config = PreprocessConfig(image_size=image_size)
    block = np.zeros((stop - start, image_size, image_size, 3), np.uint8)

    def decode_into_block(offset: int) -> dict:
        cell, record = _decode_one(shard["uris"][offset], source, config)
        if cell is not None:
            block[offset] = cell
        return record

    array = store.open_cells_array(cells_url, read_only=False)
    chunk = array.chunks[0]
    decoded: list[dict] = []
    writes: list[Future] = []
    decoding = _pool("decode", DECODE_THREADS).map(decode_into_block, range(stop - start))
    try:
        # map yields in input order, so a chunk's last record means all of its cells are in block.
        for offset, record in enumerate(decoding):
            decoded.append(record)
            slot = start + offset
            if (slot + 1) % chunk == 0 or slot + 1 == stop:
                low = max(start, slot - slot % chunk)
                writes.append(
                    _pool("zarr-write", 1).submit(
                        array.__setitem__, slice(low, slot + 1), block[low - start : offset + 1]
                    )
                )
            # A failed write stops the shard now, not after the rest of its decoding.
            while writes and writes[0].done():
                writes.pop(0).result()
        for write in writes:
            write.result()
    finally:
        decoding.close()  # cancels the decodings not started, which a failure leaves
        # No write of this shard outlives it: a retry writes the same chunks.
        wait(writes)
    records = [
        {
            "zarr_index": start + offset,
            "source_uri": uri,
            **record,
            "patient_id": shard["patients"][offset],
            "label": shard["labels"][offset],
            "cell_type": shard["cell_types"][offset],
        }
        for offset, (uri, record) in enumerate(zip(shard["uris"], decoded, strict=True))
    ]
    part = store.write_part(records_frame(records), marker_url.removesuffix(".json") + ".parquet")
    receipt = {
        "shard": spec["shard"],
        "start": start,
        "stop": stop,
        "inputs": len(records),
        "failed": sum(r["reason"] is not None for r in records),
        **part,
    }
    store.write_json(marker_url, {"plan": fingerprint, "inputs": inputs, "receipt": receipt})
    return receipt


def _text(value) -> str | None:
    """A text cell of the input table: None where Parquet holds a null."""
    return None if value is None or pd.isna(value) else str(value)


def _inputs_digest(shard: dict) -> str:
    """What a shard decodes: its first slot and its inputs (the same hash as before the inputs
    were read from a table, so an interrupted run of an older version resumes)."""
    payload = json.dumps(
        [shard[key] for key in ("start", "uris", "patients", "labels", "cell_types")]
    )
    return hashlib.sha256(payload.encode()).hexdigest()


@store_task("write-ingest-tables")
def write_ingest_tables(
    receipts: list[dict], rejected: list[dict], paths: RunPaths
) -> dict[str, int]:
    """Build the run's cell table (a dataset of one part per shard) and its quarantine on the Dask
    cluster from the shards' records parts (:func:`tasks.cell_tables.build_ingest_tables`).

    Args:
        receipts: what each ingest shard returned, in slot order.
        rejected: inputs refused at discovery (source_uri, patient_id, reason).

    Returns:
        The tables' row counts: cells and quarantined.
    """
    store = paths.store
    parts, quarantine = build_ingest_tables(
        store,
        receipts,
        pd.DataFrame(rejected, columns=["source_uri", "patient_id", "reason"]),
        paths.cells_table,
        paths.quarantine_table,
    )
    cells = sum(part["rows"] for part in parts)
    get_run_logger().info(
        "wrote %d cells (%d parts) and %d quarantined inputs to %s",
        cells,
        len(parts),
        quarantine["rows"],
        paths.root,
    )
    return {"cells": cells, "quarantined": quarantine["rows"]}
