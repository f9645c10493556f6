import keras
import numpy as np
import pytest

from aml_model.architecture import build_model
from aml_model.config import ModelConfig, PreprocessConfig
from aml_model.inference import (
    REDUCED_PRECISION_MAX_ABS_DP,
    BatchScorer,
    fold_batch_norm,
    inference_model,
)
from aml_model.predict import predict_batch
from aml_model.preprocess import decode_cell, normalise_for_resnet50
from tests.corpus import lmu_rows


def paper_model_with_batch_norm_statistics(image_size: int, seed: int = 0) -> keras.Model:
    """A paper model whose every BatchNorm holds non-trivial statistics, as trained ones do."""
    keras.utils.set_random_seed(seed)
    model = build_model(ModelConfig(image_size=image_size, backbone_weights="none"))
    rng = np.random.default_rng(seed)
    for layer in model.get_layer("resnet50").layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape),
                    rng.normal(0, 0.2, beta.shape),
                    rng.normal(0, 0.2, mean.shape),
                    rng.uniform(0.5, 2.0, variance.shape),
                ]
            )
    return model


@pytest.fixture(scope="module")
def model():
    """A 32x32 paper model with non-trivial BatchNorm statistics and spread-out probabilities."""
    model = paper_model_with_batch_norm_statistics(32)
    head = model.get_layer("blast_probability")
    kernel, bias = head.get_weights()
    # Scale the last layer so the probabilities spread over (0, 1) instead of sitting at one end.
    head.set_weights([kernel / (np.abs(kernel).sum() + 1e-6) * 4, bias])
    return model


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).integers(0, 256, (19, 32, 32, 3), dtype=np.uint8)


def test_folded_backbone_has_no_batch_norm_and_keeps_layer_names(model):
    backbone = model.get_layer("resnet50")
    folded = fold_batch_norm(backbone)
    assert [layer.name for layer in folded.layers[1:]] == [
        layer.name for layer in backbone.layers[1:]
    ]
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    assert (
        folded.get_layer("conv5_block3_out").output.shape
        == backbone.get_layer("conv5_block3_out").output.shape
    )


def test_folded_backbone_matches_the_stock_graph(model, images):
    x = normalise_for_resnet50(images.astype("float32"))
    stock = model.get_layer("resnet50")(x, training=False).numpy()
    folded = fold_batch_norm(model.get_layer("resnet50"))(x, training=False).numpy()
    np.testing.assert_allclose(folded, stock, rtol=1e-4, atol=1e-4 * np.abs(stock).max())


def test_scorer_pads_the_last_batch_and_matches_the_paper_model(model, images):
    reference = predict_batch(model, images)
    assert reference.std() > 0.01, "the fixture model must give spread-out probabilities"
    scorer = BatchScorer(inference_model(model, "float32"), batch_size=8)
    probabilities = scorer(images)  # 19 cells: two full batches and a padded one
    assert probabilities.shape == (19,) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, reference, atol=1e-5)
    np.testing.assert_allclose(scorer(images[:3]), reference[:3], atol=1e-5)
    with pytest.raises(ValueError, match="do not fit the model input"):
        scorer(images[:, :16])


def test_bfloat16_form_computes_in_bfloat16_with_a_float32_sigmoid(model, images):
    reduced = inference_model(model, "bfloat16")
    assert reduced.get_layer("resnet50").get_layer("conv1_conv").compute_dtype == "bfloat16"
    assert reduced.get_layer("blast_probability").compute_dtype == "float32"
    assert keras.config.dtype_policy().name == "float32", "the global policy is untouched"
    difference = np.abs(
        BatchScorer(reduced, batch_size=8)(images) - predict_batch(model, images)
    ).max()
    assert difference <= REDUCED_PRECISION_MAX_ABS_DP
    with pytest.raises(ValueError, match="precision 'int8'"):
        inference_model(model, "int8")


def _conv_bn(inputs, name: str, batch_norm: bool = True):
    outputs = keras.layers.Conv2D(4, 3, padding="same", name=f"{name}_conv")(inputs)
    return keras.layers.BatchNormalization(name=f"{name}_bn")(outputs) if batch_norm else outputs


def test_a_convolution_without_batch_norm_is_refused_not_left_with_random_weights():
    inputs = keras.Input((8, 8, 3))
    hidden = keras.layers.ReLU()(_conv_bn(inputs, "a"))
    unfoldable = keras.Model(inputs, _conv_bn(hidden, "b", batch_norm=False))
    with pytest.raises(
        ValueError, match="convolution.*b_conv have no BatchNormalization after them"
    ):
        fold_batch_norm(unfoldable)


def test_a_batch_norm_after_anything_but_a_convolution_is_refused():
    inputs = keras.Input((8, 8, 3))
    stray = keras.layers.BatchNormalization(name="stray_bn")(
        keras.layers.ReLU()(_conv_bn(inputs, "a"))
    )
    with pytest.raises(ValueError, match="'stray_bn' does not follow a convolution"):
        fold_batch_norm(keras.Model(inputs, stray))


@pytest.mark.slow
def test_full_size_folding_matches_the_stock_graph_in_float32_and_bfloat16(lmu_cells):
    """ResNet50 at 224 px with every BatchNorm's statistics drawn at random: all 53 folds in play.

    Two real blasts and two real neutrophils; the last layer reads the direction that separates
    them in the hidden layer, logits +-2 at the class means, as a trained head does (a random
    head on random features would amplify rounding along with inter-image differences).
    """
    rows = lmu_rows(lmu_cells)
    picked = [r for r in rows if r["label"] == "blast"][:2] + [
        r for r in rows if r["label"] == "normal"
    ][:2]
    cells = np.stack(
        [
            decode_cell(
                (lmu_cells / r["file"]).read_bytes(), r["file"], PreprocessConfig(image_size=224)
            )
            for r in picked
        ]
    )
    x = normalise_for_resnet50(cells.astype("float32"))
    model = paper_model_with_batch_norm_statistics(224, seed=3)
    backbone = model.get_layer("resnet50")
    assert sum(isinstance(layer, keras.layers.Conv2D) for layer in backbone.layers) == 53
    features, hidden = keras.Model(
        model.input, [model.get_layer("flatten").input, model.get_layer("dense").output]
    )(x, training=False)
    features, hidden = features.numpy(), hidden.numpy().astype(np.float64)
    direction = hidden[:2].mean(axis=0) - hidden[2:].mean(axis=0)
    centres = hidden[:2].mean(axis=0) @ direction, hidden[2:].mean(axis=0) @ direction
    scale = 4 / (centres[0] - centres[1])
    model.get_layer("blast_probability").set_weights(
        [
            np.float32(direction[:, None] * scale),
            np.float32([-(centres[0] + centres[1]) / 2 * scale]),
        ]
    )
    reference = model.get_layer("blast_probability")(hidden.astype(np.float32)).numpy().reshape(-1)
    assert (reference[:2] > 0.7).all() and (reference[2:] < 0.3).all(), reference

    folded = fold_batch_norm(backbone)(x, training=False).numpy()
    np.testing.assert_allclose(folded, features, rtol=1e-4, atol=1e-4 * np.abs(features).max())
    np.testing.assert_allclose(
        inference_model(model, "float32")(x).numpy().reshape(-1), reference, rtol=1e-4
    )
    reduced = inference_model(model, "bfloat16")(x).numpy().reshape(-1)
    assert np.abs(reduced - reference).max() <= REDUCED_PRECISION_MAX_ABS_DP
