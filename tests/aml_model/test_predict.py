import keras
import numpy as np
import pytest

from aml_model.architecture import build_model
from aml_model.config import ModelConfig
from aml_model.predict import predict_batch


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
