import keras
import numpy as np
import pytest

from aml_model.architecture import build_model
from aml_model.config import ModelConfig
from aml_model.predict import predict_batch, with_precision


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return build_model(ModelConfig(image_size=32, backbone_weights="none"))


def test_predict_batch_shape_and_range(model):
    images = np.random.default_rng(0).integers(0, 255, (7, 32, 32, 3), dtype=np.uint8)
    probabilities = predict_batch(model, images, batch_size=3)
    assert probabilities.shape == (7,) and probabilities.dtype == np.float32
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    np.testing.assert_allclose(probabilities[:3], predict_batch(model, images[:3]), atol=1e-6)
    with pytest.raises(ValueError, match="do not fit the model input"):
        predict_batch(model, images[:, :16])


def test_bfloat16_copy_keeps_weights_and_stays_close(model):
    reduced = with_precision(model, "bfloat16")
    assert reduced.get_layer("resnet50").get_layer("conv1_conv").compute_dtype == "bfloat16"
    assert reduced.get_layer("blast_probability").compute_dtype == "float32"
    assert keras.config.dtype_policy().name == "float32", "the global policy is restored"
    images = np.random.default_rng(1).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    difference = np.abs(predict_batch(reduced, images) - predict_batch(model, images)).max()
    assert difference < 0.05
    assert with_precision(model, "float32") is model
    with pytest.raises(ValueError, match="precision 'int8'"):
        with_precision(model, "int8")
