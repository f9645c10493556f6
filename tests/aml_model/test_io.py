import keras
import numpy as np
import pytest

from aml_model.architecture import build_model
from aml_model.config import ModelConfig
from aml_model.errors import UnsafeModelError
from aml_model.io import load_model, save_model
from aml_model.predict import predict_batch


def test_round_trip_keeps_predictions_and_optimizer(tmp_path):
    keras.utils.set_random_seed(1)
    model = build_model(ModelConfig(image_size=32, head_units=8, backbone_weights="none"))
    images = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    path = save_model(model, tmp_path / "model.keras")
    loaded = load_model(path)
    np.testing.assert_allclose(
        predict_batch(loaded, images), predict_batch(model, images), atol=1e-6
    )
    assert isinstance(loaded.optimizer, keras.optimizers.Adam)
    assert loaded.get_layer("resnet50").trainable is False


@pytest.mark.reliability
def test_lambda_layer_is_refused_in_safe_mode(tmp_path):
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)
    path = tmp_path / "evil.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(UnsafeModelError, match="evil.keras"):
        load_model(path)


def test_missing_file_and_wrong_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        load_model(tmp_path / "missing.keras")
    with pytest.raises(ValueError, match="must end in .keras"):
        save_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), tmp_path / "m.h5")
