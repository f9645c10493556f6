import dataclasses
import hashlib
import re

import keras
import numpy as np
import pytest

from aml_model.architecture import (
    build_backbone,
    resolve_backbone_weights,
    seed_weights,
    whole_backbone,
)
from aml_model.config import ModelConfig
from aml_model.errors import BackboneWeightsError, WeightsHashMismatchError
from aml_model.weights import (
    load_backbone_weights,
    local_weights_file,
    local_weights_path,
    partial_weights_layers,
    save_partial_weights,
)

THIRD_STAGE = "conv3_block4_out"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A whole ResNet50 with weights of its own and a partial file of its first three stages."""
    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    seed_weights(backbone, 11)
    path = tmp_path_factory.mktemp("partial") / "cells.h5"
    save_partial_weights(backbone, THIRD_STAGE, path)
    return backbone, path


def test_a_partial_file_holds_the_stages_up_to_its_layer_in_float16_and_is_small(trained):
    backbone, path = trained
    layers = partial_weights_layers(path)
    names = [layer.name for layer in backbone.layers]
    assert layers == names[: names.index(THIRD_STAGE) + 1]
    values = sum(
        int(np.prod(w.shape)) for layer in backbone.layers[: len(layers)] for w in layer.weights
    )
    assert values == 1_460_096  # ResNet50's stages 1-3, BatchNorm statistics included
    assert path.stat().st_size < 2 * values + 200_000  # float16, plus HDF5's bookkeeping


def test_keras_reads_a_partial_file_by_layer_name_into_a_whole_resnet50(trained):
    backbone, path = trained
    fresh = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    seed_weights(fresh, 12)
    later = fresh.get_layer("conv4_block1_1_conv").get_weights()[0]
    load_backbone_weights(fresh, path, THIRD_STAGE)
    for name in ("conv1_conv", "conv2_block1_0_bn", "conv3_block4_3_conv"):
        for a, b in zip(
            fresh.get_layer(name).get_weights(), backbone.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6)  # float16 rounding
    np.testing.assert_array_equal(fresh.get_layer("conv4_block1_1_conv").get_weights()[0], later)


def test_a_partial_file_is_refused_for_a_recipe_that_reads_further(trained):
    _, path = trained
    fresh = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    with pytest.raises(
        BackboneWeightsError,
        match=r"holds layers up to conv3_block4_out, but the recipe reads up to "
        r"conv5_block3_out \(.*the first conv4_block1_1_conv\)",
    ):
        load_backbone_weights(fresh, path, "conv5_block3_out")
    with pytest.raises(BackboneWeightsError, match="reads up to conv5_block3_out"):
        build_backbone(ModelConfig(image_size=32, backbone_weights=str(path)))


def test_a_backbone_on_a_partial_file_is_the_same_network_every_time(trained):
    """The layers the file lacks are drawn from a fixed seed, so the whole network (and the feature
    cache's backbone id, a hash of it) does not change from one build to the next."""
    _, path = trained
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    config = ModelConfig(
        image_size=32,
        backbone_weights=str(path),
        backbone_weights_sha256=digest,
        feature_layer=THIRD_STAGE,
        feature_pooling="mean_std",
    )
    keras.utils.set_random_seed(1)
    first = whole_backbone(config)
    keras.utils.set_random_seed(2)
    second = whole_backbone(config)
    for a, b in zip(first.weights, second.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert build_backbone(config).output_shape == (None, 1024)


def test_a_changed_partial_file_is_refused(trained, tmp_path):
    _, path = trained
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    tampered = tmp_path / "cells.h5"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(WeightsHashMismatchError, match=f"expected {digest}"):
        build_backbone(
            ModelConfig(
                image_size=32,
                backbone_weights=str(tampered),
                backbone_weights_sha256=digest,
                feature_layer=THIRD_STAGE,
            )
        )


def test_other_files_are_not_taken_for_partial_ones(tmp_path):
    whole = tmp_path / "whole.weights.h5"
    keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(32, 32, 3)
    ).save_weights(whole)
    assert partial_weights_layers(whole) is None
    text = tmp_path / "notes.h5"
    text.write_text("not HDF5")
    assert partial_weights_layers(text) is None


@pytest.mark.parametrize(
    "url", ["s3://bucket/cells.h5", "https://example.org/cells.h5", "simplecache::s3://b/cells.h5"]
)
def test_a_remote_weights_url_must_be_fetched_first(url):
    """This library reads local files only: the caller fetches a remote file (tasks.weights)."""
    with pytest.raises(
        BackboneWeightsError,
        match=f"backbone weights file {re.escape(url)} is not a local file: "
        f"it must be fetched first",
    ):
        build_backbone(ModelConfig(image_size=32, backbone_weights=url))
    with pytest.raises(BackboneWeightsError, match="must be fetched first"):
        local_weights_file(url)


def test_the_local_copy_of_a_remote_file_is_read_in_its_place_and_checked(trained, tmp_path):
    """The configuration keeps the URL; the weights come from the local copy given, checked against its sha256."""
    _, path = trained
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    config = ModelConfig(
        image_size=32,
        backbone_weights="s3://bucket/cells.h5",
        backbone_weights_sha256=digest,
        feature_layer=THIRD_STAGE,
        feature_pooling="mean_std",
    )
    assert resolve_backbone_weights(config, str(path)) == str(path)
    reference = dataclasses.replace(config, backbone_weights=str(path))
    for a, b in zip(
        whole_backbone(config, str(path)).weights, whole_backbone(reference).weights, strict=True
    ):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    other = tmp_path / "other.h5"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    other.write_bytes(bytes(data))
    with pytest.raises(WeightsHashMismatchError, match=f"expected {digest}"):
        build_backbone(config, str(other))
    with pytest.raises(ValueError, match="names no file"):
        build_backbone(ModelConfig(image_size=32, backbone_weights="none"), str(path))


def test_a_file_url_is_a_local_file(trained):
    _, path = trained
    assert local_weights_path(path.as_uri()) == str(path)
    assert local_weights_file(path.as_uri()) == str(path)
    assert local_weights_path("s3://bucket/cells.h5") is None
