import keras
import numpy as np

from aml_model.augment import build_augmenter
from aml_model.config import AugmentConfig


def test_layers_carry_the_papers_ranges():
    augmenter = build_augmenter(AugmentConfig())
    by_type = {type(layer).__name__: layer for layer in augmenter.layers}
    assert set(by_type) == {"RandomRotation", "RandomTranslation", "RandomZoom", "RandomFlip"}
    assert by_type["RandomRotation"].factor == (-20 / 360, 20 / 360)
    assert by_type["RandomTranslation"].height_factor == 0.2
    assert by_type["RandomTranslation"].width_factor == 0.2
    assert by_type["RandomZoom"].height_factor == 0.2
    assert by_type["RandomFlip"].mode == "horizontal_and_vertical"


def test_disabled_transforms_are_left_out():
    augmenter = build_augmenter(AugmentConfig(rotation_degrees=0, width_shift=0, height_shift=0, zoom=0,
                                              vertical_flip=False))
    assert [type(layer).__name__ for layer in augmenter.layers] == ["RandomFlip"]
    assert augmenter.layers[0].mode == "horizontal"


def test_training_changes_images_and_inference_does_not():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    augmenter = build_augmenter(AugmentConfig(), seed=1)
    augmented = keras.ops.convert_to_numpy(augmenter(images, training=True))
    assert augmented.shape == images.shape
    assert not np.allclose(augmented, images)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(augmenter(images, training=False)), images)


def test_robust_augmentation_adds_colour_and_scale_and_is_inactive_in_inference():
    from aml_model.config import ExperimentConfig

    augment = ExperimentConfig.for_recipe("robust").train.augment
    augmenter = build_augmenter(augment, seed=2)
    names = [type(layer).__name__ for layer in augmenter.layers]
    assert names[:5] == ["RandomStainTransfer", "RandomHue", "RandomSaturation", "RandomBrightness", "RandomContrast"]
    zooms = [layer for layer in augmenter.layers if isinstance(layer, keras.layers.RandomZoom)]
    assert len(zooms) == 2
    low, high = zooms[1].height_factor
    # Cells are drawn between 1/1.5 and 1.5 times their size: factors 1/1.5 - 1 and 0.5.
    assert (round(low, 4), high) == (round(1 / 1.5 - 1, 4), 0.5)
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    augmented = keras.ops.convert_to_numpy(augmenter(images, training=True))
    assert not np.allclose(augmented, images) and augmented.min() >= 0 and augmented.max() <= 255
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(augmenter(images, training=False)), images)


def test_random_channel_gamma_bends_each_channel_by_its_own_curve_in_training_only():
    import numpy as np

    from aml_model.augment import RandomChannelGamma

    images = np.tile(np.linspace(0, 255, 16, dtype=np.float32)[None, :, None, None], (8, 1, 16, 3))
    layer = RandomChannelGamma(0.5, seed=4)
    np.testing.assert_array_equal(np.asarray(layer(images, training=False)), images)
    bent = np.asarray(layer(images, training=True))
    # Each (image, channel) is 255 * (x / 255) ** gamma for one gamma in [e^-0.5, e^0.5].
    x = np.clip(images[:, 8, 0, :] / 255.0, 1e-6, 1.0)
    gammas = np.log(bent[:, 8, 0, :] / 255.0) / np.log(x)
    assert np.all((gammas > np.exp(-0.5) - 1e-4) & (gammas < np.exp(0.5) + 1e-4))
    np.testing.assert_allclose(bent, 255.0 * np.clip(images / 255.0, 1e-6, 1.0) ** gammas[:, None, None, :],
                               rtol=1e-4, atol=1e-3)
    assert np.unique(np.round(gammas, 4)).size > 12, "draws differ by image and channel"
