import keras
import numpy as np

from aml_model.pooling import SpatialMeanStd


def test_each_channel_gives_its_spatial_mean_then_its_standard_deviation():
    maps = np.random.default_rng(0).normal(2.0, 3.0, (3, 5, 7, 4)).astype(np.float32)
    pooled = keras.ops.convert_to_numpy(SpatialMeanStd()(maps))
    assert pooled.shape == (3, 8)
    np.testing.assert_allclose(pooled[:, :4], maps.mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(pooled[:, 4:], maps.std(axis=(1, 2)), rtol=1e-4)


def test_statistics_stay_float32_in_a_reduced_precision_model():
    inputs = keras.Input((6, 6, 2), dtype="bfloat16")
    layer = SpatialMeanStd(dtype="bfloat16")
    outputs = layer(inputs)
    assert layer.compute_dtype == "float32" and outputs.dtype == "float32"


def test_a_constant_channel_has_zero_spread_and_a_finite_gradient():
    import tensorflow as tf

    maps = tf.Variable(np.ones((1, 4, 4, 1), np.float32))
    with tf.GradientTape() as tape:
        spread = SpatialMeanStd()(maps)[0, 1]
    assert float(spread) < 1e-2
    assert np.isfinite(tape.gradient(spread, maps).numpy()).all()
