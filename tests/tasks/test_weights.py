"""Backbone weights files named by a URL: fetched through the machine's cache, checked, never stale."""

import hashlib
import os

import keras
import numpy as np
import pytest
import s3fs

from aml_model.architecture import build_backbone, seed_weights
from aml_model.config import ModelConfig
from aml_model.errors import BackboneWeightsError, WeightsHashMismatchError
from tasks.store import Store
from tasks.weights import fetch_backbone_weights, fetch_weights_file

NAME = "backbone.weights.h5"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache folder of the test's own, so what it holds is this test's doing."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("AML_SMEAR_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A small whole ResNet50's weights file: (the backbone, its bytes, their sha256)."""
    backbone = seed_weights(
        keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3)), 5
    )
    path = tmp_path_factory.mktemp("weights") / NAME
    backbone.save_weights(path)
    data = path.read_bytes()
    return backbone, data, hashlib.sha256(data).hexdigest()


@pytest.fixture
def remote(s3_bucket, weights):
    """(the store, the weights file's s3:// URL, s3fs) on a moto S3 server."""
    bucket, options = s3_bucket
    fs = s3fs.S3FileSystem(**options)
    url = f"s3://{bucket}/shared/{NAME}"
    fs.pipe_file(url, weights[1])
    return Store(f"s3://{bucket}/store", options), url, fs


class Reads:
    """Counts the store's reads of whole objects."""

    def __init__(self, monkeypatch):
        self.count = 0
        read = Store.read_bytes

        def counted(store, url):
            self.count += 1
            return read(store, url)

        monkeypatch.setattr(Store, "read_bytes", counted)


def test_a_remote_file_is_fetched_into_the_cache_under_its_sha256_once(
    remote, weights, cache, monkeypatch
):
    store, url, _ = remote
    _, data, digest = weights
    reads = Reads(monkeypatch)
    local = fetch_weights_file(store, url, digest)
    assert local == str(cache / f"{digest}-{NAME}"), (
        "named by the content, keeping Keras' file-name suffix"
    )
    assert open(local, "rb").read() == data and reads.count == 1
    assert fetch_weights_file(store, url, digest.upper()) == local
    assert reads.count == 1, "a cached copy of the recorded sha256 is reused"


def test_a_remote_backbone_is_built_from_its_local_copy(remote, weights, cache):
    store, url, _ = remote
    saved, _, digest = weights
    model = ModelConfig(image_size=32, backbone_weights=url, backbone_weights_sha256=digest)
    local = fetch_backbone_weights(model, store)
    assert local.startswith(str(cache))
    keras.utils.set_random_seed(99)  # another random start, so equality proves loading
    loaded = build_backbone(model, local)
    for a, b in zip(saved.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(
        BackboneWeightsError, match=f"{url} is not a local file: it must be fetched first"
    ):
        build_backbone(model)


def test_a_remote_file_that_differs_from_its_sha256_is_refused_and_not_cached(
    remote, weights, cache
):
    store, url, _ = remote
    _, _, digest = weights
    wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
    with pytest.raises(
        WeightsHashMismatchError, match=f"{url} has sha256 {digest}, expected {wrong}"
    ):
        fetch_weights_file(store, url, wrong)
    assert not [name for name in os.listdir(cache) if not name.endswith(".partial")]


def test_a_changed_cached_copy_is_fetched_again(remote, weights, cache):
    store, url, _ = remote
    _, data, digest = weights
    local = fetch_weights_file(store, url, digest)
    with open(local, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff\xff")
    assert fetch_weights_file(store, url, digest) == local
    assert open(local, "rb").read() == data


def test_without_a_sha256_the_file_is_fetched_every_time_never_taken_stale(
    remote, weights, cache, monkeypatch
):
    store, url, fs = remote
    _, data, digest = weights
    reads = Reads(monkeypatch)
    first = fetch_weights_file(store, url)
    assert open(first, "rb").read() == data and os.path.basename(first) == f"{digest}-{NAME}"
    newer = data[:-1] + bytes([data[-1] ^ 0xFF])
    fs.pipe_file(url, newer)
    second = fetch_weights_file(store, url)
    assert reads.count == 2
    assert open(second, "rb").read() == newer, (
        "the file at the URL now, not the copy of the old one"
    )
    assert os.path.basename(second) == f"{hashlib.sha256(newer).hexdigest()}-{NAME}"
    assert fetch_weights_file(store, url) == second and reads.count == 3


def test_a_missing_remote_file_is_a_clear_error(remote, cache):
    store, url, _ = remote
    missing = url.replace(NAME, "nope.weights.h5")
    with pytest.raises(
        BackboneWeightsError, match=f"backbone weights file {missing} cannot be read"
    ):
        fetch_weights_file(store, missing)
    with pytest.raises(
        BackboneWeightsError, match=f"backbone weights file {missing} cannot be read"
    ):
        fetch_weights_file(store, missing, "0" * 64)


def test_a_local_file_is_used_where_it_is_its_sha256_checked(tmp_path, weights, cache):
    _, data, digest = weights
    path = tmp_path / NAME
    path.write_bytes(data)
    store = Store(str(tmp_path / "store"))
    assert fetch_weights_file(store, str(path), digest) == str(path)
    assert fetch_weights_file(store, path.as_uri(), digest) == str(path)
    assert not cache.exists() or not os.listdir(cache), "nothing copied"
    wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
    with pytest.raises(WeightsHashMismatchError, match=f"has sha256 {digest}, expected {wrong}"):
        fetch_weights_file(store, str(path), wrong)
    with pytest.raises(BackboneWeightsError, match="cannot be read"):
        fetch_weights_file(store, str(tmp_path / "nope.weights.h5"))


def test_imagenet_and_none_name_no_file_to_fetch(tmp_path):
    store = Store(str(tmp_path))
    assert fetch_backbone_weights(ModelConfig(backbone_weights="imagenet"), store) is None
    assert fetch_backbone_weights(ModelConfig(backbone_weights="none"), store) is None


def test_prepare_backbone_builds_a_remote_backbone_and_keeps_its_url(remote, weights, cache):
    """The feature cache's backbone is built from the fetched copy; the URL is what the model names."""
    from tasks.features import FeatureCache, prepare_backbone

    store, url, _ = remote
    _, _, digest = weights
    model = ModelConfig(image_size=32, backbone_weights=url, backbone_weights_sha256=digest)
    backbone_id, weights_url, shape = prepare_backbone(model, store, 0)
    assert weights_url == FeatureCache(store, backbone_id).weights and store.exists(weights_url)
    assert shape == (1, 1, 2048)
    assert model.backbone_weights == url
    assert os.listdir(cache) == [f"{digest}-{NAME}"]
