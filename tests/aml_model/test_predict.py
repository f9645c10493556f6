import keras
import numpy as np
import pytest

from aml_model.architecture import build_model
from aml_model.config import ModelConfig
from aml_model.predict import predict_batch

#: ImageNet channel means of ResNet50's "caffe" input normalisation, in BGR order.
BGR_MEANS = np.array([103.939, 116.779, 123.68], np.float32)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(image_size=32, backbone_weights="none"))
    head = model.get_layer("blast_probability")
    kernel, bias = head.get_weights()
    # Scale the last layer so the probabilities spread over (0, 1) instead of sitting at one end.
    head.set_weights([kernel / (np.abs(kernel).sum() + 1e-6) * 4, bias])
    return model


def test_predict_batch_is_the_model_on_resnet50_normalised_cells_in_order(model):
    images = np.random.default_rng(0).integers(0, 255, (7, 32, 32, 3), dtype=np.uint8)
    probabilities = predict_batch(model, images, batch_size=3)  # batches of 3, 3 and 1
    assert probabilities.shape == (7,) and probabilities.dtype == np.float32
    # Independently: RGB -> BGR, minus the ImageNet means, one forward pass of the whole stack.
    expected = (
        model(images[..., ::-1].astype(np.float32) - BGR_MEANS, training=False).numpy().reshape(-1)
    )
    assert expected.std() > 0.01, "the fixture model must tell the cells apart"
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    np.testing.assert_allclose(
        predict_batch(model, images[::-1], batch_size=3), expected[::-1], atol=1e-5
    )
    assert predict_batch(model, images[:0]).shape == (0,)
    with pytest.raises(ValueError, match="do not fit the model input"):
        predict_batch(model, images[:, :16])
