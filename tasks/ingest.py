"""Ingest tasks: decode one shard of inputs into its own Zarr chunks, then write the tables."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
from prefect import get_run_logger

from aml_model.catalog import build_cell_tables
from aml_model.config import PreprocessConfig
from aml_model.errors import ImageDecodeError
from aml_model.preprocess import decode_cell
from tasks.discover import CellInput
from tasks.retry import store_task
from tasks.store import Store
from tasks.store_layout import RunPaths

__all__ = ["ShardSpec", "ingest_shard", "plan_hash", "plan_shards", "write_ingest_tables"]


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


ShardSpec = dict  # {"shard": int, "start": int, "uris": [str, ...]}


def plan_shards(
    inputs: list[CellInput], chunk_cells: int, chunks_per_shard: int = 1
) -> list[ShardSpec]:
    """Cut the inputs into shards aligned to Zarr chunks, so no two shards share a chunk."""
    size = chunk_cells * chunks_per_shard
    return [
        {"shard": number, "start": start, "uris": [c.uri for c in inputs[start : start + size]]}
        for number, start in enumerate(range(0, len(inputs), size))
    ]


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
) -> list[dict]:
    """Decode the shard's inputs and write its whole Zarr chunks; skip if already done.

    A bad input becomes a record with a reason and a zero slot; the others go on. The
    marker, written after the chunks, makes a rerun of the same plan skip this shard.
    The inputs (``spec["uris"]``) are read through ``source``; ``cells_url`` and
    ``marker_url`` are written through ``store``.

    Returns:
        One record per input: zarr_index, source_uri, sha256, reason.
    """
    if store.exists(marker_url):
        marker = store.read_json(marker_url)
        # Shards are numbered by position: a rerun with other chunks_per_task finds markers of
        # other slot ranges under the same names.
        done = [(r["zarr_index"], r["source_uri"]) for r in marker.get("records", [])]
        if marker.get("plan") == fingerprint and done == list(
            enumerate(spec["uris"], start=spec["start"])
        ):
            return marker["records"]
    config = PreprocessConfig(image_size=image_size)
    block = np.zeros((len(spec["uris"]), image_size, image_size, 3), np.uint8)
    records = []
    for offset, uri in enumerate(spec["uris"]):
        cell, record = _decode_one(uri, source, config)
        if cell is not None:
            block[offset] = cell
        records.append({"zarr_index": spec["start"] + offset, "source_uri": uri, **record})
    array = store.open_cells_array(cells_url, read_only=False)
    array[spec["start"] : spec["start"] + len(block)] = block
    store.write_json(marker_url, {"plan": fingerprint, "records": records})
    return records


@store_task("write-ingest-tables")
def write_ingest_tables(
    inputs: list[CellInput],
    records: list[dict],
    rejected: list[dict],
    paths: RunPaths,
) -> dict[str, int]:
    """Build and write cells.parquet and quarantine.parquet; returns their row counts."""
    frame = pd.DataFrame(records).sort_values("zarr_index", kind="stable")
    meta = pd.DataFrame(
        [{"patient_id": c.patient_id, "label": c.label, "cell_type": c.cell_type} for c in inputs],
        columns=["patient_id", "label", "cell_type"],
    )
    frame = pd.concat([frame.reset_index(drop=True), meta], axis=1)
    cells, quarantine = build_cell_tables(
        frame, pd.DataFrame(rejected, columns=["source_uri", "patient_id", "reason"])
    )
    paths.store.write_table(cells, paths.cells_table)
    paths.store.write_table(quarantine, paths.quarantine_table)
    get_run_logger().info(
        "wrote %d cells and %d quarantined inputs to %s", len(cells), len(quarantine), paths.root
    )
    return {"cells": len(cells), "quarantined": len(quarantine)}
