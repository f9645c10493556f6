"""The Store contract (tasks/store.py), written once and run against a local folder, a real S3 API
(moto's server) and ``memory://``, in the manner of zarr-python's store tests.

:class:`StoreContract` holds what every store must do; each subclass provides the ``store`` fixture
and adds what only its kind of store does (atomic renames on disk, copies into the local model
cache from remote stores, the S3 endpoint option).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pickle
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest

from tasks.store import IMAGES, PROBABILITIES, Store, is_local, join, part_name
from tasks.store_cache import CachedFileMismatchError
from tasks.store_layout import RunPaths, ScoringPaths

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Refused(Exception):
    """A change function's refusal."""


class StoreContract:
    """What every store must do; subclasses provide the ``store`` fixture (an empty store)."""

    #: Whether the store's contents are seen by another process (not so for ``memory://``).
    SHARED_BETWEEN_PROCESSES = True
    #: ``Store.is_local`` for this kind of store.
    LOCAL = False

    @pytest.fixture
    def store(self) -> Store:
        raise NotImplementedError

    # Round trips.

    def test_bytes_json_and_tables_round_trip(self, store):
        assert store.write_bytes(store.path("a", "b.bin"), b"\x00\x01") == store.path("a", "b.bin")
        assert store.read_bytes(store.path("a", "b.bin")) == b"\x00\x01"
        assert store.write_json(store.path("x.json"), {"k": [1, 2]}) == store.path("x.json")
        assert store.read_json(store.path("x.json")) == {"k": [1, 2]}
        frame = pd.DataFrame(
            {"cell_id": ["a:1", "b:2"], "probability": np.array([0.25, 0.75], np.float32)}
        )
        assert store.write_table(frame, store.path("t.parquet")) == store.path("t.parquet")
        back = store.read_table(store.path("t.parquet"))
        assert back.columns.tolist() == ["cell_id", "probability"], "the index is not written"
        assert back["cell_id"].tolist() == ["a:1", "b:2"]
        assert back["probability"].dtype == np.float32
        np.testing.assert_array_equal(
            back["probability"].to_numpy(), frame["probability"].to_numpy()
        )

    def test_a_table_dataset_reads_as_one_table_in_slot_order(self, store):
        folder = store.path("cells.parquet")
        frames = {
            (100, 200): pd.DataFrame({"zarr_index": [150, 199], "p": [0.5, 0.25]}),
            (0, 100): pd.DataFrame({"zarr_index": [3, 7], "p": [1.0, 0.0]}),
            (200, 300): pd.DataFrame({"zarr_index": pd.Series([], dtype="int64"), "p": []}),
        }
        receipts = [
            store.write_part(frame, f"{folder}/{part_name(*slots)}")
            for slots, frame in frames.items()
        ]
        store.write_bytes(f"{folder}/_notes.txt", b"not a part")
        assert store.table_parts(folder) == [
            f"{folder}/{part_name(0, 100)}",
            f"{folder}/{part_name(100, 200)}",
            f"{folder}/{part_name(200, 300)}",
        ]
        back = store.read_table(folder)
        assert back["zarr_index"].tolist() == [3, 7, 150, 199]
        assert store.table_columns(folder) == ["zarr_index", "p"]
        assert store.read_table(folder, filters=[("p", ">", 0.3)])["zarr_index"].tolist() == [
            3,
            150,
        ]
        assert [r["rows"] for r in receipts] == [2, 2, 0]
        assert (
            receipts[0]["sha256"]
            == hashlib.sha256(store.read_bytes(receipts[0]["url"])).hexdigest()
        )
        assert receipts[0]["bytes"] == len(store.read_bytes(receipts[0]["url"]))
        # One Parquet object (an older run's table) is no dataset, and reads as before.
        store.write_table(back, store.path("old.parquet"))
        assert store.table_parts(store.path("old.parquet")) == []
        assert store.table_columns(store.path("old.parquet")) == ["zarr_index", "p"]
        pd.testing.assert_frame_equal(store.read_table(store.path("old.parquet")), back)

    def test_a_write_replaces_the_whole_object(self, store):
        url = store.path("t.bin")
        store.write_bytes(url, b"a much longer first version")
        store.write_bytes(url, b"short")
        assert store.read_bytes(url) == b"short"

    def test_json_is_written_sorted_indented_and_with_other_values_as_text(self, store):
        url = store.path("card.json")
        store.write_json(url, {"b": 1, "a": datetime.datetime(2026, 1, 2, 3, 4, 5)})
        assert store.read_json(url) == {"a": "2026-01-02 03:04:05", "b": 1}
        assert store.read_bytes(url).decode() == '{\n  "a": "2026-01-02 03:04:05",\n  "b": 1\n}'

    def test_reading_a_missing_object_raises_file_not_found(self, store):
        with pytest.raises(FileNotFoundError):
            store.read_bytes(store.path("missing.bin"))
        with pytest.raises(FileNotFoundError):
            store.read_json(store.path("missing.json"))

    def test_exists_and_remove(self, store):
        url = store.path("gone.json")
        assert not store.exists(url)
        store.write_json(url, {})
        assert store.exists(url)
        store.remove(url)
        assert not store.exists(url)
        store.remove(url)  # removing twice is fine

    def test_remove_recursive_removes_a_folder_and_everything_under_it(self, store):
        folder = store.path("runs", "r1")
        store.write_bytes(join(folder, "a.bin"), b"a")
        store.write_bytes(join(folder, "deeper", "b.bin"), b"b")
        store.write_bytes(store.path("runs", "r2", "kept.bin"), b"k")
        store.remove(folder, recursive=True)
        assert not store.exists(join(folder, "a.bin")) and not store.exists(
            join(folder, "deeper", "b.bin")
        )
        assert store.list_names(store.runs) == ["r2"]
        assert store.read_bytes(store.path("runs", "r2", "kept.bin")) == b"k"

    # Listing and copying.

    def test_list_names_lists_the_entries_directly_under_a_folder_sorted(self, store):
        store.write_bytes(store.path("models", "v2", "model.keras"), b"2")
        store.write_bytes(store.path("models", "v1", "model.keras"), b"1")
        store.write_bytes(store.path("models", "champion.json"), b"{}")
        assert store.list_names(store.models) == ["champion.json", "v1", "v2"]
        assert store.list_names(store.path("models", "v1")) == ["model.keras"]
        assert store.list_names(store.path("nothing-here")) == []

    def test_copy_tree_copies_every_file_byte_for_byte(self, store):
        source, target = (
            store.path("runs", "r1", "scores", "s1"),
            store.path("runs", "r2", "scores", "s1"),
        )
        files = {
            "score.json": b'{"model": "v1"}',
            "reports/index.html": b"<html>",
            "reports/p/a.png": b"\x89PNG",
        }
        for name, data in files.items():
            store.write_bytes(join(source, name), data)
        assert store.copy_tree(source, target) == 3
        for name, data in files.items():
            assert store.read_bytes(join(target, name)) == data
            assert store.read_bytes(join(source, name)) == data, "the source is left as it was"
        assert store.list_names(target) == ["reports", "score.json"]
        assert store.copy_tree(store.path("runs", "missing"), store.path("runs", "elsewhere")) == 0
        assert not store.exists(store.path("runs", "elsewhere"))

    # The champion pointer's conditional write.

    def test_update_object_passes_the_previous_bytes_to_the_change(self, store):
        url = store.path("models", "champion.json")
        seen = []

        def change(previous):
            seen.append(previous)
            return b"v1" if previous is None else previous + b"+v2"

        assert store.update_object(url, change) == b"v1"
        assert store.update_object(url, change) == b"v1+v2"
        assert seen == [None, b"v1"]
        assert store.read_bytes(url) == b"v1+v2"

    def test_a_refusing_change_writes_nothing(self, store):
        url = store.path("models", "champion.json")
        store.write_bytes(url, b"before")
        seen = []

        def refuse(previous):
            seen.append(previous)
            raise Refused("no")

        with pytest.raises(Refused):
            store.update_object(url, refuse)
        assert seen == [b"before"]
        assert store.read_bytes(url) == b"before"
        absent = store.path("models", "other.json")
        with pytest.raises(Refused):
            store.update_object(absent, refuse)
        assert seen[-1] is None
        assert not store.exists(absent)

    def test_concurrent_updates_are_all_kept(self, store):
        url = store.path("models", "counter.json")
        threads_n, updates_n = 4, 5

        def add(previous):
            value = json.loads(previous) if previous is not None else {"n": 0, "by": []}
            value["n"] += 1
            value["by"].append(
                uuid.uuid4().hex
            )  # every write differs, as the pointer's write id makes it
            return json.dumps(value).encode()

        errors = []

        def worker():
            try:
                for _ in range(updates_n):
                    store.update_object(url, add)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        final = store.read_json(url)
        assert final["n"] == threads_n * updates_n, "no update was lost to another writer"
        assert len(set(final["by"])) == threads_n * updates_n

    # Zarr arrays of cells.

    def test_cells_arrays_have_chunks_per_task_and_refuse_a_different_shape(self, store):
        url = store.path("cells.zarr")
        images = store.create_cells_array(url, 10, 8, 4)
        assert (
            images.shape == (10, 8, 8, 3)
            and images.chunks == (4, 8, 8, 3)
            and images.dtype == np.uint8
        )
        images[4:8] = np.full((4, 8, 8, 3), 7, np.uint8)
        probabilities = store.create_probabilities_array(url, 10, 4)
        assert (
            probabilities.shape == (10,)
            and probabilities.chunks == (4,)
            and probabilities.dtype == np.float32
        )
        assert np.isnan(probabilities[:]).all()
        reopened = store.open_cells_array(url)
        assert (reopened[4:8] == 7).all() and (reopened[:4] == 0).all()
        assert store.create_cells_array(url, 10, 8, 4).shape == (10, 8, 8, 3)
        assert (store.open_cells_array(url, IMAGES)[4:8] == 7).all(), "reopening keeps the cells"
        with pytest.raises(ValueError, match="already exists with shape"):
            store.create_cells_array(url, 12, 8, 4)
        with pytest.raises(ValueError, match="already exists with shape"):
            store.create_cells_array(url, 10, 8, 2)

    def test_a_cells_array_opened_for_writing_writes_every_chunk_without_comparing(self, store):
        url = store.path("written.zarr")
        store.create_cells_array(url, 8, 8, 4)
        writable = store.open_cells_array(url, read_only=False)
        assert writable.config.write_empty_chunks
        writable[0:4] = np.zeros((4, 8, 8, 3), np.uint8)
        writable[4:8] = np.full((4, 8, 8, 3), 3, np.uint8)
        # Zarr's default compares each chunk with the fill value and leaves an all-fill one out.
        assert store.exists(f"{url}/{IMAGES}/c/0/0/0/0") and store.exists(
            f"{url}/{IMAGES}/c/1/0/0/0"
        )
        reopened = store.open_cells_array(url)
        assert (reopened[:4] == 0).all() and (reopened[4:] == 3).all()

    def test_probabilities_are_kept_when_reopened_and_remade_for_another_cell_count(self, store):
        url = store.path("probabilities.zarr")
        store.create_probabilities_array(url, 10, 4)[0:4] = np.full(4, 0.5, np.float32)
        writable = store.open_cells_array(url, PROBABILITIES, read_only=False)
        writable[8:10] = np.array([0.1, 0.9], np.float32)
        again = store.create_probabilities_array(url, 10, 4)
        np.testing.assert_array_equal(
            again[[0, 3, 8, 9]], np.array([0.5, 0.5, 0.1, 0.9], np.float32)
        )
        assert np.isnan(again[4:8]).all()
        remade = store.create_probabilities_array(url, 12, 4)
        assert remade.shape == (12,) and np.isnan(remade[:]).all()

    # Layout.

    def test_path_sub_and_the_layout_are_urls_under_the_root(self, store):
        root = store.url
        assert store.path() == root
        assert store.path("a", "b.json") == f"{root}/a/b.json"
        for name in ("runs", "models", "backbones", "features", "ledger"):
            assert getattr(store, name) == f"{root}/{name}"
        sub = store.sub("runs", "r1")
        assert sub == Store(f"{root}/runs/r1", store.options)
        sub.write_json(sub.path("x.json"), {"via": "sub"})
        assert store.read_json(store.path("runs", "r1", "x.json")) == {"via": "sub"}
        assert store.list_names(store.runs) == ["r1"]

    def test_run_and_scoring_are_layout_views_of_this_store(self, store):
        root = store.url
        run = store.run("r1")
        assert isinstance(run, RunPaths) and run == RunPaths(store, "r1")
        assert run.store is store and run.root == f"{root}/runs/r1"
        scoring = store.scoring("r1", "s1")
        assert isinstance(scoring, ScoringPaths) and scoring == run.scoring("s1")
        assert scoring.store is store and scoring.run_id == "r1"
        assert scoring.root == f"{root}/runs/r1/scores/s1"
        store.write_json(run.plan, {"n": 1})
        store.write_json(scoring.settings, {"model": "v1"})
        assert store.list_names(run.root) == ["ingest_plan.json", "scores"]
        assert store.read_json(f"{root}/runs/r1/scores/s1/score.json") == {"model": "v1"}

    def test_resolve_gives_the_filesystem_and_its_path(self, store):
        fs, path = store.resolve()
        assert isinstance(fs, fsspec.AbstractFileSystem)
        assert store.fs is fs, "fsspec keeps one filesystem per options in a process"
        assert store.is_local is self.LOCAL and is_local(fs) is self.LOCAL
        fs_of_file, path_of_file = store.resolve(store.path("a", "b.bin"))
        assert fs_of_file is fs and path_of_file == f"{path.rstrip('/')}/a/b.bin"
        store.write_bytes(store.path("a", "b.bin"), b"seen")
        assert fs.cat_file(path_of_file) == b"seen"

    # Pickling to Dask workers.

    def test_a_store_pickles_and_works_after_unpickling(self, store):
        store.write_bytes(store.path("before.bin"), b"written before")
        assert store.fs is not None  # a store that has opened its filesystem pickles the same
        restored = pickle.loads(pickle.dumps(store))
        assert restored == store and restored is not store
        assert vars(restored) == {"url": store.url, "options": store.options}, (
            "only the URL and options travel"
        )
        assert restored.read_bytes(restored.path("before.bin")) == b"written before"
        restored.write_bytes(restored.path("after.bin"), b"written after")
        assert store.read_bytes(store.path("after.bin")) == b"written after"
        assert pickle.loads(pickle.dumps(store.run("r1"))) == store.run("r1")
        assert pickle.loads(pickle.dumps(store.scoring("r1", "s1"))) == store.scoring("r1", "s1")

    def test_a_store_pickled_to_another_process_reads_and_writes_there(self, store):
        if not self.SHARED_BETWEEN_PROCESSES:
            pytest.skip("memory:// lives in one process")
        store.write_bytes(store.path("before.bin"), b"from the parent")
        child = (
            "import pickle, sys\n"
            "store = pickle.loads(sys.stdin.buffer.read())\n"
            "sys.stdout.buffer.write(store.read_bytes(store.path('before.bin')))\n"
            "store.write_bytes(store.path('after.bin'), b'from the child')\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", child],
            input=pickle.dumps(store),
            capture_output=True,
            cwd=PROJECT_ROOT,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        assert done.stdout == b"from the parent"
        assert store.read_bytes(store.path("after.bin")) == b"from the child"


class RemoteStoreContract(StoreContract):
    """Stores that Keras cannot read from directly: their files are copied into the local cache."""

    def test_local_copy_is_fetched_once_into_the_local_cache(self, store, tmp_path, monkeypatch):
        monkeypatch.setenv("AML_SMEAR_CACHE_DIR", str(tmp_path / "cache"))
        url = store.path("m.bin")
        store.write_bytes(url, b"v1")
        first = store.local_copy(url, "m-v1.bin")
        assert first == str(tmp_path / "cache" / "m-v1.bin")
        assert Path(first).read_bytes() == b"v1"
        store.write_bytes(url, b"v2")
        assert store.local_copy(url, "m-v1.bin") == first
        assert Path(first).read_bytes() == b"v1", (
            "a name identifies content: the cached copy is kept"
        )

    def test_local_copy_checks_the_recorded_sha256(self, store, tmp_path, monkeypatch):
        monkeypatch.setenv("AML_SMEAR_CACHE_DIR", str(tmp_path / "cache"))
        url = store.path("m.bin")
        store.write_bytes(url, b"v2")
        right = hashlib.sha256(b"v2").hexdigest()
        assert Path(store.local_copy(url, "m-v2.bin", sha256=right)).read_bytes() == b"v2"
        with pytest.raises(CachedFileMismatchError):
            store.local_copy(
                url, "m-other.bin", sha256=hashlib.sha256(b"something else").hexdigest()
            )
        assert not (tmp_path / "cache" / "m-other.bin").exists()

    def test_local_copy_of_a_missing_object_raises_file_not_found(
        self, store, tmp_path, monkeypatch
    ):
        monkeypatch.setenv("AML_SMEAR_CACHE_DIR", str(tmp_path / "cache"))
        with pytest.raises(FileNotFoundError):
            store.local_copy(store.path("nope.bin"), "nope.bin")
        assert not (tmp_path / "cache" / "nope.bin").exists()


class TestLocalStore(StoreContract):
    LOCAL = True

    @pytest.fixture
    def store(self, tmp_path):
        return Store(str(tmp_path / "store"))

    def test_atomic_write_leaves_no_partial_files(self, store, tmp_path):
        for _ in range(3):
            store.write_bytes(store.path("t.bin"), b"x" * 1000)
        assert [p.name for p in (tmp_path / "store").iterdir()] == ["t.bin"]

    def test_a_failed_write_leaves_the_old_object_whole_and_its_leftover_is_not_copied(
        self, store, monkeypatch
    ):
        url = store.path("run", "cells.parquet")
        store.write_bytes(url, b"old")

        def disk_full(fd):
            raise OSError(28, "No space left on device")

        with monkeypatch.context() as patch:
            patch.setattr(os, "fsync", disk_full)
            with pytest.raises(OSError, match="No space left"):
                store.write_bytes(url, b"new and never whole")
        assert store.read_bytes(url) == b"old", "a reader never sees a half-written object"
        assert store.copy_tree(store.path("run"), store.path("copy")) == 1
        assert store.list_names(store.path("copy")) == ["cells.parquet"]

    def test_local_copy_of_a_local_file_is_the_file_itself(self, store, tmp_path, monkeypatch):
        monkeypatch.setenv("AML_SMEAR_CACHE_DIR", str(tmp_path / "cache"))
        url = store.path("m.bin")
        store.write_bytes(url, b"v1")
        assert store.local_copy(url, "m-v1.bin") == url
        assert not (tmp_path / "cache").exists(), "nothing is copied"
        with pytest.raises(FileNotFoundError, match="nope.bin does not exist"):
            store.local_copy(store.path("nope.bin"), "nope.bin")

    def test_a_file_url_is_a_local_store(self, tmp_path):
        store = Store(f"file://{tmp_path}/store")
        assert store.is_local
        url = store.write_bytes(store.path("m.bin"), b"v1")
        assert url == f"file://{tmp_path}/store/m.bin"
        assert (tmp_path / "store" / "m.bin").read_bytes() == b"v1"
        assert store.local_copy(url, "m-v1.bin") == str(tmp_path / "store" / "m.bin"), (
            "a path Keras can open"
        )

    def test_store_at_a_local_path_has_no_options(self, tmp_path):
        assert Store.at(str(tmp_path), "http://127.0.0.1:9000") == Store(str(tmp_path))
        assert Store.at(str(tmp_path)).options == {}


class TestS3Store(RemoteStoreContract):
    @pytest.fixture
    def store(self, s3_bucket):
        bucket, options = s3_bucket
        return Store(f"s3://{bucket}/store", options)

    def test_store_at_takes_the_endpoint_only_for_s3_urls(self, s3_endpoint):
        endpoint = {"client_kwargs": {"endpoint_url": s3_endpoint}}
        assert Store.at("s3://b/x", s3_endpoint) == Store("s3://b/x", endpoint)
        assert Store.at("s3a://b/x", s3_endpoint).options == endpoint
        assert Store.at("/data/x", s3_endpoint).options == {}
        assert Store.at("memory://x", s3_endpoint).options == {}
        assert Store.at("s3://b/x").options == {}
        assert Store.at("s3://b/x", None).options == {}

    def test_store_at_reaches_the_bucket_through_the_endpoint(self, store, s3_endpoint):
        store.write_bytes(store.path("a.bin"), b"on moto")
        again = Store.at(store.url, s3_endpoint)
        assert again == store
        assert again.read_bytes(again.path("a.bin")) == b"on moto"


class TestMemoryStore(RemoteStoreContract):
    SHARED_BETWEEN_PROCESSES = False

    @pytest.fixture
    def store(self):
        store = Store(f"memory://aml-smear-store-test-{uuid.uuid4().hex}")
        yield store
        store.remove(store.url, recursive=True)
        assert not store.exists(store.url)
