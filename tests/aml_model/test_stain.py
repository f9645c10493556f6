import dataclasses

import keras
import numpy as np
import pytest

from aml_model.architecture import (
    adapt_feature_normalisation,
    build_model,
    copy_layer_weights,
    feature_extractor,
)
from aml_model.config import ExperimentConfig, ModelConfig
from aml_model.inference import BatchScorer, inference_model
from aml_model.io import load_model, save_model
from aml_model.predict import predict_batch
from aml_model.preprocess import normalise_for_resnet50
from aml_model.stain import STAIN_LAYER_NAME, StainNormalisation, standardise_colour


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["channel", "grey"])
def test_a_change_of_gain_and_offset_per_channel_gives_the_same_input(images, mode):
    # What a brighter lamp or a stronger stain does to a cell, to first order.
    gain, offset = np.array([0.7, 1.2, 0.9]), np.array([30.0, -10.0, 5.0])
    recoloured = np.clip(images * gain + offset, 0, 255)
    original = keras.ops.convert_to_numpy(
        standardise_colour(normalise_for_resnet50(images.astype("float32")), mode)
    )
    moved = keras.ops.convert_to_numpy(
        standardise_colour(normalise_for_resnet50(recoloured.astype("float32")), mode)
    )
    correlation = np.corrcoef(original.ravel(), moved.ravel())[0, 1]
    assert correlation > 0.95
    np.testing.assert_allclose(original.mean(axis=(1, 2)), 0, atol=1e-3)
    assert np.allclose(original.std(axis=(1, 2)), 50, rtol=0.05)
    assert not np.allclose(
        normalise_for_resnet50(images.astype("float32")),
        normalise_for_resnet50(recoloured.astype("float32")),
    )


def test_channel_standardisation_undoes_a_per_channel_gain_exactly():
    rng = np.random.default_rng(1)
    images = rng.uniform(60, 180, (3, 16, 16, 3)).astype("float32")
    gain = np.array([1.3, 0.8, 1.1], "float32")
    a = keras.ops.convert_to_numpy(standardise_colour(normalise_for_resnet50(images), "channel"))
    b = keras.ops.convert_to_numpy(
        standardise_colour(normalise_for_resnet50(images * gain), "channel")
    )
    # The ResNet offsets are constants, so a gain on 0..255 becomes gain plus offset: both vanish.
    # Exact but for the epsilon that guards a flat image: under 1 on a spread of 50.
    np.testing.assert_allclose(a, b, atol=1.0)
    grey = keras.ops.convert_to_numpy(standardise_colour(normalise_for_resnet50(images), "grey"))
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="stain normalisation 'hed'"):
        standardise_colour(np.zeros((1, 4, 4, 3), "float32"), "hed")
    with pytest.raises(ValueError, match="'channel' or 'grey'"):
        StainNormalisation("none")


def test_robust_model_scores_identically_after_save_and_reload_and_in_the_inference_form(
    images, tmp_path
):
    config = ExperimentConfig.for_recipe(
        "robust", ModelConfig(image_size=32, backbone_weights="none")
    )
    keras.utils.set_random_seed(0)
    model = build_model(config.model)
    # The head's feature statistics, fitted as training fits them, are saved with the model too.
    features = feature_extractor(model).predict(
        normalise_for_resnet50(images.astype("float32")), verbose=0
    )
    assert adapt_feature_normalisation(model, features)
    assert [layer.name for layer in model.layers[1:3]] == ["scale_normalisation", STAIN_LAYER_NAME]
    assert model.get_layer(STAIN_LAYER_NAME).mode == "channel"
    before = predict_batch(model, images)
    loaded = load_model(save_model(model, tmp_path / "robust.keras"), compile=False)
    assert loaded.get_layer(STAIN_LAYER_NAME).mode == "channel"
    np.testing.assert_array_equal(predict_batch(loaded, images), before)
    # Scoring goes through the folded inference form: it must keep the normalisation.
    scorer = BatchScorer(inference_model(loaded), batch_size=4)
    np.testing.assert_allclose(scorer(images), before, atol=1e-5)
    # Without the layer the scores differ: the test above would notice a lost normalisation.
    plain = build_model(
        dataclasses.replace(config.model, stain_normalisation="none", scale_normalisation="none")
    )
    for layer in plain.layers:
        copy_layer_weights(model.get_layer(layer.name), layer)
    assert not np.allclose(predict_batch(plain, images), before, atol=1e-5)


def test_paper_model_has_no_stain_layer():
    model = build_model(ModelConfig(image_size=32, backbone_weights="none"))
    assert STAIN_LAYER_NAME not in [layer.name for layer in model.layers]


def test_lab_conversion_matches_scikit_image_and_inverts():
    from skimage.color import rgb2lab

    from aml_model.stain import lab_to_rgb, rgb_to_lab

    rgb = np.random.default_rng(2).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    lab = keras.ops.convert_to_numpy(rgb_to_lab(rgb))
    np.testing.assert_allclose(lab, rgb2lab(rgb / 255), atol=1e-3)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(lab_to_rgb(lab)), rgb, atol=0.01)


def test_stain_transfer_recolours_in_training_only_and_lands_in_the_target_ranges():
    from aml_model.stain import TRANSFER_TARGETS, RandomStainTransfer, rgb_to_lab

    rng = np.random.default_rng(3)
    # Bluish LMU-like cells: a narrow range the transfer must move out of.
    images = np.clip(rng.normal((200, 180, 230), 20, (8, 24, 24, 3)), 0, 255).astype("float32")
    layer = RandomStainTransfer(1.0, seed=4)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(images, training=False)), images)
    moved = keras.ops.convert_to_numpy(layer(images, training=True))
    means = keras.ops.convert_to_numpy(rgb_to_lab(moved)).mean(axis=(1, 2))
    b_low, b_high = TRANSFER_TARGETS[2]
    assert (means[:, 2] > b_low - 3).all() and (means[:, 2] < b_high + 3).all()
    # Each image gets its own target: the b* means spread out instead of staying together.
    original = keras.ops.convert_to_numpy(rgb_to_lab(images)).mean(axis=(1, 2))
    assert np.ptp(means[:, 2]) > 3 * np.ptp(original[:, 2])
