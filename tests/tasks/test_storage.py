"""Storage round trips, written once and run against the local disk and a real S3 API (moto)."""

import numpy as np
import pandas as pd
import pytest

from tasks import storage


class StorageContract:
    """What every store must do; subclasses provide ``root`` (a URL) and ``options``."""

    @pytest.fixture
    def where(self):
        raise NotImplementedError

    def test_bytes_json_and_tables_round_trip(self, where):
        root, options = where
        storage.write_bytes(storage.join(root, "a", "b.bin"), b"\x00\x01", options)
        assert storage.read_bytes(storage.join(root, "a", "b.bin"), options) == b"\x00\x01"
        storage.write_json(storage.join(root, "x.json"), {"k": [1, 2]}, options)
        assert storage.read_json(storage.join(root, "x.json"), options) == {"k": [1, 2]}
        frame = pd.DataFrame({"cell_id": ["a:1", "b:2"], "probability": np.array([0.25, 0.75], np.float32)})
        storage.write_table(frame, storage.join(root, "t.parquet"), options)
        back = storage.read_table(storage.join(root, "t.parquet"), options)
        assert back["cell_id"].tolist() == ["a:1", "b:2"]
        np.testing.assert_array_equal(back["probability"].to_numpy(), frame["probability"].to_numpy())

    def test_exists_and_remove(self, where):
        root, options = where
        url = storage.join(root, "gone.json")
        storage.write_json(url, {}, options)
        assert storage.exists(url, options)
        storage.remove(url, options)
        assert not storage.exists(url, options)
        storage.remove(url, options)  # removing twice is fine

    def test_cells_arrays_have_chunks_per_task_and_refuse_a_different_shape(self, where):
        root, options = where
        url = storage.join(root, "cells.zarr")
        images = storage.create_cells_array(url, 10, 8, 4, options)
        assert images.shape == (10, 8, 8, 3) and images.chunks == (4, 8, 8, 3)
        images[4:8] = np.full((4, 8, 8, 3), 7, np.uint8)
        probabilities = storage.create_probabilities_array(url, 10, 4, options)
        assert np.isnan(probabilities[:]).all()
        reopened = storage.open_cells_array(url, options)
        assert (reopened[4:8] == 7).all() and (reopened[:4] == 0).all()
        assert storage.create_cells_array(url, 10, 8, 4, options).shape == (10, 8, 8, 3)
        with pytest.raises(ValueError, match="already exists with shape"):
            storage.create_cells_array(url, 12, 8, 4, options)


class TestLocalStorage(StorageContract):
    @pytest.fixture
    def where(self, tmp_path):
        return str(tmp_path / "store"), {}

    def test_atomic_write_leaves_no_partial_files(self, where, tmp_path):
        root, options = where
        for _ in range(3):
            storage.write_bytes(storage.join(root, "t.bin"), b"x" * 1000, options)
        assert [p.name for p in (tmp_path / "store").iterdir()] == ["t.bin"]

    def test_local_copy_of_a_local_file_is_the_file_itself(self, where):
        root, options = where
        url = storage.join(root, "m.bin")
        storage.write_bytes(url, b"v1", options)
        assert storage.local_copy(url, options, "m-v1.bin") == url
        with pytest.raises(FileNotFoundError, match="nope.bin does not exist"):
            storage.local_copy(storage.join(root, "nope.bin"), options, "nope.bin")


class TestS3Storage(StorageContract):
    @pytest.fixture
    def where(self, s3_bucket):
        bucket, options = s3_bucket
        return f"s3://{bucket}/store", options

    def test_local_copy_is_fetched_once_into_the_local_cache(self, where, tmp_path, monkeypatch):
        root, options = where
        monkeypatch.setenv("AML_SMEAR_CACHE_DIR", str(tmp_path / "cache"))
        url = storage.join(root, "m.bin")
        storage.write_bytes(url, b"v1", options)
        first = storage.local_copy(url, options, "m-v1.bin")
        assert first == str(tmp_path / "cache" / "m-v1.bin")
        storage.write_bytes(url, b"v2", options)
        assert storage.local_copy(url, options, "m-v1.bin") == first
        assert open(first, "rb").read() == b"v1", "a name identifies content: the cached copy is kept"

    def test_endpoint_option_only_for_s3(self, s3_endpoint):
        assert storage.storage_options_for("s3://b/x", s3_endpoint) == {"client_kwargs": {"endpoint_url": s3_endpoint}}
        assert storage.storage_options_for("/data/x", s3_endpoint) == {}
        assert storage.storage_options_for("s3://b/x") == {}
