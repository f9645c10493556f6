"""Ingest tasks: decode one shard of inputs into its own Zarr chunks, then write the tables."""

from __future__ import annotations

import hashlib
import json

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
    "ShardSpec",
    "ingest_shard",
    "plan_hash",
    "plan_shards",
    "shard_stop",
    "write_ingest_tables",
]


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


ShardSpec = dict
"""One decoding shard: ``{"shard": int, "start": int, "uris": [...], "patients": [...], "labels":
[...], "cell_types": [...]}``, an input per slot from ``start`` on."""


def plan_shards(
    inputs: list[CellInput], chunk_cells: int, chunks_per_shard: int = 1
) -> list[ShardSpec]:
    """Cut the inputs into shards aligned to Zarr chunks, so no two shards share a chunk."""
    size = chunk_cells * chunks_per_shard
    return [
        {
            "shard": number,
            "start": start,
            "uris": [c.uri for c in inputs[start : start + size]],
            "patients": [c.patient_id for c in inputs[start : start + size]],
            "labels": [c.label for c in inputs[start : start + size]],
            "cell_types": [c.cell_type for c in inputs[start : start + size]],
        }
        for number, start in enumerate(range(0, len(inputs), size))
    ]


def shard_stop(spec: ShardSpec) -> int:
    """The slot after a shard's last."""
    return spec["start"] + len(spec["uris"])


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
    """Decode the shard's inputs, write its whole Zarr chunks and its records part; skip if done.

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
    inputs = _inputs_digest(spec)
    if store.exists(marker_url):
        marker = store.read_json(marker_url)
        # Shards are numbered by position: a rerun with other chunks_per_task finds markers of
        # other slot ranges under the same names.
        if marker.get("plan") == fingerprint and marker.get("inputs") == inputs:
            return marker["receipt"]
    config = PreprocessConfig(image_size=image_size)
    block = np.zeros((len(spec["uris"]), image_size, image_size, 3), np.uint8)
    records = []
    for offset, uri in enumerate(spec["uris"]):
        cell, record = _decode_one(uri, source, config)
        if cell is not None:
            block[offset] = cell
        records.append(
            {
                "zarr_index": spec["start"] + offset,
                "source_uri": uri,
                **record,
                "patient_id": spec["patients"][offset],
                "label": spec["labels"][offset],
                "cell_type": spec["cell_types"][offset],
            }
        )
    array = store.open_cells_array(cells_url, read_only=False)
    array[spec["start"] : spec["start"] + len(block)] = block
    part = store.write_part(records_frame(records), marker_url.removesuffix(".json") + ".parquet")
    receipt = {
        "shard": spec["shard"],
        "start": spec["start"],
        "stop": shard_stop(spec),
        "inputs": len(records),
        "failed": sum(r["reason"] is not None for r in records),
        **part,
    }
    store.write_json(marker_url, {"plan": fingerprint, "inputs": inputs, "receipt": receipt})
    return receipt


def _inputs_digest(spec: ShardSpec) -> str:
    """What a shard decodes: its slots and their inputs."""
    payload = json.dumps(
        [spec[key] for key in ("start", "uris", "patients", "labels", "cell_types")]
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
