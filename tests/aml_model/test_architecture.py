import hashlib

import keras
import numpy as np
import pytest

from aml_model.architecture import build_backbone, build_head, build_model, seed_weights
from aml_model.config import ModelConfig
from aml_model.errors import BackboneWeightsError, WeightsHashMismatchError
from aml_model.weights import IMAGENET_NOTOP_FILE

TINY = ModelConfig(image_size=32, head_units=8, backbone_weights="none")


@pytest.fixture(scope="module")
def paper_model():
    # The paper's configuration with an untrained backbone: ImageNet weights cannot be downloaded here.
    return build_model(ModelConfig(backbone_weights="none"))


def test_paper_layer_sequence(paper_model):
    layers = paper_model.layers
    assert [type(layer).__name__ for layer in layers] == [
        "InputLayer",
        "Functional",
        "Flatten",
        "Dense",
        "Dense",
    ]
    assert paper_model.input_shape == (None, 224, 224, 3)
    backbone = layers[1]
    assert backbone.name == "resnet50"
    assert backbone.output.shape[1:] == (7, 7, 2048)
    assert layers[3].units == 128 and layers[3].activation is keras.activations.relu
    assert layers[4].units == 1 and layers[4].activation is keras.activations.sigmoid
    assert paper_model.output_shape == (None, 1)


def test_paper_backbone_is_entirely_frozen(paper_model):
    backbone = paper_model.get_layer("resnet50")
    assert backbone.trainable is False
    assert backbone.trainable_weights == []
    assert all(not layer.trainable for layer in backbone.layers)
    assert len(backbone.layers) == 175  # keras.applications.ResNet50 without its top


def test_paper_trainable_parameters(paper_model):
    trainable = sum(int(np.prod(w.shape)) for w in paper_model.trainable_weights)
    assert trainable == 100_352 * 128 + 128 + 128 + 1 == 12_845_313


def test_paper_optimizer_and_loss(paper_model):
    optimizer = paper_model.optimizer
    assert isinstance(optimizer, keras.optimizers.Adam)
    assert float(optimizer.learning_rate) == pytest.approx(1e-4)
    assert isinstance(paper_model.loss, keras.losses.BinaryCrossentropy)


def test_head_layers_match_the_full_model_by_name():
    model = build_model(TINY)
    head = build_head(tuple(model.get_layer("resnet50").output.shape[1:]), TINY)
    assert [layer.name for layer in head.layers] == [layer.name for layer in model.layers[2:]]
    assert [w.shape for w in head.weights] == [
        w.shape for w in model.layers[2].weights + model.layers[3].weights + model.layers[4].weights
    ]


def test_the_robust_recipe_reads_pooled_third_stage_features_through_a_standardised_logistic_head():
    from aml_model.config import ExperimentConfig

    config = ExperimentConfig.for_recipe(
        "robust", ModelConfig(image_size=64, backbone_weights="none")
    ).model
    model = build_model(config)
    backbone = model.get_layer("resnet50")
    names = [layer.name for layer in backbone.layers]
    assert names[-2:] == ["conv3_block4_out", "feature_pooling"]
    assert not any(name.startswith(("conv4", "conv5")) for name in names)
    assert backbone.output.shape[1:] == (1024,) and backbone.trainable_weights == []
    assert [layer.name for layer in model.layers[-3:]] == [
        "feature_normalisation",
        "flatten",
        "blast_probability",
    ]
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 1024 + 1
    assert float(model.optimizer.learning_rate) == pytest.approx(3e-3)
    # The cut network draws its random weights as the whole one does, layer for layer.
    full = seed_weights(build_backbone(ModelConfig(image_size=64, backbone_weights="none")), 3)
    cut = seed_weights(build_backbone(config), 3)
    np.testing.assert_array_equal(
        cut.get_layer("conv3_block4_3_conv").kernel.numpy(),
        full.get_layer("conv3_block4_3_conv").kernel.numpy(),
    )


def test_a_head_trained_on_pooled_features_scores_alike_in_the_assembled_model():
    from aml_model.architecture import (
        adapt_feature_normalisation,
        assemble_model,
        feature_extractor,
    )
    from aml_model.config import ExperimentConfig

    config = ExperimentConfig.for_recipe(
        "robust", ModelConfig(image_size=32, backbone_weights="none")
    ).model
    images = np.random.default_rng(0).uniform(-100, 100, (6, 32, 32, 3)).astype(np.float32)
    model = seed_weights(build_model(config), 0)
    features = feature_extractor(model).predict(images, verbose=0)
    head = seed_weights(build_head(features.shape[1:], config), 1)
    assert adapt_feature_normalisation(head, features)
    standardised = keras.ops.convert_to_numpy(head.get_layer("feature_normalisation")(features))
    np.testing.assert_allclose(standardised.mean(axis=0), 0, atol=1e-3)
    # The statistics travel with the weights into the full model (Normalization recomputes from them).
    assembled = assemble_model(config, head)
    seed_weights(assembled.get_layer("resnet50"), 0)  # the backbone the features came from
    np.testing.assert_allclose(
        assembled.predict(images, verbose=0), head.predict(features, verbose=0), atol=1e-5
    )
    assert not adapt_feature_normalisation(build_model(TINY), features), (
        "the paper's head has nothing to fit"
    )


@pytest.fixture
def weights_file(tmp_path):
    keras.utils.set_random_seed(3)
    backbone = build_backbone(TINY)
    path = tmp_path / "backbone.weights.h5"
    backbone.save_weights(path)
    return backbone, path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.reliability
@pytest.mark.parametrize("as_url", [False, True])
def test_weights_file_is_loaded_with_its_hash_checked(weights_file, as_url):
    saved, path, digest = weights_file
    location = path.as_uri() if as_url else str(path)
    keras.utils.set_random_seed(99)  # a different random init, so equality proves loading
    loaded = build_backbone(
        ModelConfig(image_size=32, backbone_weights=location, backbone_weights_sha256=digest)
    )
    for a, b in zip(saved.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.reliability
def test_wrong_hash_is_refused(weights_file):
    _, path, digest = weights_file
    wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
    with pytest.raises(WeightsHashMismatchError, match="expected " + wrong):
        build_backbone(
            ModelConfig(image_size=32, backbone_weights=str(path), backbone_weights_sha256=wrong)
        )


def test_missing_weights_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.weights.h5"
    with pytest.raises(BackboneWeightsError, match="cannot be read"):
        build_backbone(ModelConfig(image_size=32, backbone_weights=str(missing)))


def test_imagenet_offline_says_how_to_provide_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras-home"))
    with pytest.raises(BackboneWeightsError) as caught:
        build_model(ModelConfig(image_size=32))
    message = str(caught.value)
    assert IMAGENET_NOTOP_FILE in message
    assert str(tmp_path / "empty-keras-home" / "models") in message
    assert "--backbone-weights" in message


def test_seed_weights_depend_on_the_seed_alone():
    import random

    config = ModelConfig(image_size=32, backbone_weights="none")
    first = seed_weights(build_head((1, 1, 2048), config), 7).get_weights()
    random.random()  # another thread advancing Python's global generator must not matter
    second = seed_weights(build_head((1, 1, 2048), config), 7).get_weights()
    other = seed_weights(build_head((1, 1, 2048), config), 8).get_weights()
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    limit = np.sqrt(6.0 / (2048 + 128))
    assert np.abs(first[0]).max() <= limit and first[0].std() > limit / 3  # Glorot-uniform's range
    assert not first[1].any()
