import hashlib
import io
import json
import threading

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from aml_model.config import PreprocessConfig
from aml_model.preprocess import decode_cell
from tasks.discover import CellInput
from tasks.ingest import DECODE_THREADS, ingest_shard, plan_hash, plan_shards
from tasks.store import Store


def test_a_changed_cell_type_is_a_changed_input_and_untyped_plans_keep_their_hash():
    typed = [
        CellInput("s/MYO/1.jpg", "s", "blast", "myeloblast"),
        CellInput("s/NGS/2.jpg", "s", "normal", None),
    ]
    retyped = [CellInput("s/MYO/1.jpg", "s", "blast", "monoblast"), typed[1]]
    untyped = [CellInput("s/MYO/1.jpg", "s", "blast"), typed[1]]
    assert len({plan_hash(inputs, 224, 64) for inputs in (typed, retyped, untyped)}) == 3
    # Inputs without a type hash as before cell types existed: earlier runs keep their ids.
    legacy = json.dumps([["s/MYO/1.jpg", "s", "blast"], ["s/NGS/2.jpg", "s", "normal"], 224, 64])
    assert plan_hash(untyped, 224, 64) == hashlib.sha256(legacy.encode()).hexdigest()


def _shard_inputs(tmp_path, n: int, corrupt: int):
    """``n`` distinct 24 px PNG cells (the ``corrupt``-th is not an image) and a local store with
    their input table and an empty cells array of chunks of 4."""
    uris = []
    for i in range(n):
        path = tmp_path / "cells" / f"{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(np.full((24, 24, 3), 10 * i, np.uint8)).save(buffer, "PNG")
        path.write_bytes(b"not an image" if i == corrupt else buffer.getvalue())
        uris.append(str(path))
    store = Store(str(tmp_path / "store"))
    inputs = store.path("inputs.parquet")
    store.write_part(
        pd.DataFrame({"uri": uris, "patient_id": "p", "label": None, "cell_type": None}), inputs
    )
    cells = store.path("cells.zarr")
    store.create_cells_array(cells, n, 16, 4)
    return store, inputs, cells


def test_an_ingest_shard_writes_each_chunk_its_records_and_last_its_marker(tmp_path):
    store, inputs, cells = _shard_inputs(tmp_path, 10, corrupt=5)
    (spec,) = plan_shards(10, inputs, 4, 3)  # chunks 0-3, 4-7 and the partial 8-9
    marker = store.path("_shards", "00000.json")
    receipt = ingest_shard.fn(spec, cells, marker, "plan", 16, Store("/"), store)
    assert (receipt["inputs"], receipt["failed"]) == (10, 1) and store.exists(marker)
    images = store.open_cells_array(cells)[:]
    for i in range(10):
        path = tmp_path / "cells" / f"{i:02d}.png"
        expected = (
            np.zeros((16, 16, 3), np.uint8)
            if i == 5
            else decode_cell(path.read_bytes(), str(path), PreprocessConfig(image_size=16))
        )
        np.testing.assert_array_equal(images[i], expected, err_msg=f"cell {i}")
    records = store.read_table(receipt["url"])
    assert records["zarr_index"].tolist() == list(range(10))
    assert records["reason"].notna().tolist() == [i == 5 for i in range(10)]


def test_a_failed_chunk_write_fails_the_shard_and_leaves_no_marker(tmp_path):
    store, inputs, cells = _shard_inputs(tmp_path, 8, corrupt=-1)

    class FullDisk(Store):
        """Writes the first chunk, then finds the disk full."""

        def open_cells_array(self, url, name="images", read_only=True):
            array = super().open_cells_array(url, name, read_only)

            class Failing:
                chunks = array.chunks

                def __setitem__(self, rows, values):
                    if rows.start >= 4:
                        raise OSError(28, "No space left on device")
                    array[rows] = values

            return array if read_only else Failing()

    failing = FullDisk(store.url)
    (spec,) = plan_shards(8, inputs, 4, 2)
    marker = failing.path("_shards", "00000.json")
    with pytest.raises(OSError, match="No space left"):
        ingest_shard.fn(spec, cells, marker, "plan", 16, Store("/"), failing)
    assert not failing.exists(marker) and not failing.exists(
        marker.removesuffix(".json") + ".parquet"
    )
    assert (failing.open_cells_array(cells)[:4] > 0).any(), "the first chunk was written"


def test_the_ingest_shards_of_one_process_share_its_threads(tmp_path):
    # Python 3.11 can deadlock a Dask worker that starts a thread while Dask's profiler reads
    # every thread's frames (CPython gh-106883): a process keeps at most DECODE_THREADS decoding
    # threads and one writer from shard to shard, where each shard started its own.
    def threads(prefix: str) -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith(prefix)}

    store, inputs, cells = _shard_inputs(tmp_path, 12, corrupt=-1)
    first, *others = plan_shards(12, inputs, 4, 1)
    ingest_shard.fn(first, cells, store.path("_s", "0.json"), "plan", 16, Store("/"), store)
    kept = threads("decode") | threads("zarr-write")
    assert kept, "the first shard's threads are kept for the next"
    for spec in others:
        marker = store.path("_s", f"{spec['shard']}.json")
        ingest_shard.fn(spec, cells, marker, "plan", 16, Store("/"), store)
    assert all(t.is_alive() for t in kept)
    assert len(threads("decode")) <= DECODE_THREADS and len(threads("zarr-write")) == 1
    np.testing.assert_array_equal(store.open_cells_array(cells)[:, 0, 0, 0], 10 * np.arange(12))
