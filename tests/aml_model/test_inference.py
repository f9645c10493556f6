import keras
import numpy as np
import pytest

from aml_model.architecture import build_model
from aml_model.config import ModelConfig
from aml_model.inference import BatchScorer, fold_batch_norm, inference_model
from aml_model.predict import predict_batch


@pytest.fixture(scope="module")
def model():
    """A 32x32 paper model whose BatchNorm layers hold non-trivial statistics, as trained ones do."""
    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(image_size=32, backbone_weights="none"))
    rng = np.random.default_rng(0)
    for layer in model.get_layer("resnet50").layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.2, beta.shape),
                               rng.normal(0, 0.2, mean.shape), rng.uniform(0.5, 2.0, variance.shape)])
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
    assert [layer.name for layer in folded.layers[1:]] == [layer.name for layer in backbone.layers[1:]]
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    assert folded.get_layer("conv5_block3_out").output.shape == backbone.get_layer("conv5_block3_out").output.shape


def test_folded_backbone_matches_the_stock_graph(model, images):
    from aml_model.preprocess import normalise_for_resnet50

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
    difference = np.abs(BatchScorer(reduced, batch_size=8)(images) - predict_batch(model, images)).max()
    assert difference < 0.1
    with pytest.raises(ValueError, match="precision 'int8'"):
        inference_model(model, "int8")
