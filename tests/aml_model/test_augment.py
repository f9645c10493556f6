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
    augmenter = build_augmenter(
        AugmentConfig(
            rotation_degrees=0, width_shift=0, height_shift=0, zoom=0, vertical_flip=False
        )
    )
    assert [type(layer).__name__ for layer in augmenter.layers] == ["RandomFlip"]
    assert augmenter.layers[0].mode == "horizontal"


def test_training_changes_images_and_inference_does_not():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    augmenter = build_augmenter(AugmentConfig(), seed=1)
    augmented = keras.ops.convert_to_numpy(augmenter(images, training=True))
    assert augmented.shape == images.shape
    assert not np.allclose(augmented, images)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(augmenter(images, training=False)), images
    )


def test_robust_augmentation_adds_colour_and_scale_and_is_inactive_in_inference():
    from aml_model.config import ExperimentConfig

    augment = ExperimentConfig.for_recipe("robust").train.augment
    augmenter = build_augmenter(augment, seed=2)
    names = [type(layer).__name__ for layer in augmenter.layers]
    assert names[:5] == [
        "RandomStainTransfer",
        "RandomHue",
        "RandomSaturation",
        "RandomBrightness",
        "RandomContrast",
    ]
    zooms = [layer for layer in augmenter.layers if isinstance(layer, keras.layers.RandomZoom)]
    assert len(zooms) == 2
    low, high = zooms[1].height_factor
    # Cells are drawn between 1/1.5 and 1.5 times their size: factors 1/1.5 - 1 and 0.5.
    assert (round(low, 4), high) == (round(1 / 1.5 - 1, 4), 0.5)
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    augmented = keras.ops.convert_to_numpy(augmenter(images, training=True))
    assert not np.allclose(augmented, images) and augmented.min() >= 0 and augmented.max() <= 255
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(augmenter(images, training=False)), images
    )


def test_random_tone_curves_are_monotone_maps_of_each_channel_in_training_only():
    import numpy as np

    from aml_model.augment import RandomToneCurve

    ramp = np.linspace(0, 255, 64, dtype=np.float32)
    images = np.tile(ramp[None, :, None, None], (16, 1, 4, 3))
    layer = RandomToneCurve(1.0, seed=4)
    np.testing.assert_array_equal(np.asarray(layer(images, training=False)), images)
    bent = np.asarray(layer(images, training=True))
    assert bent.shape == images.shape and bent.min() >= 0 and bent.max() <= 255.001
    curves = bent[:, :, 0, :]  # (image, intensity, channel): each column a curve
    assert np.all(np.diff(curves, axis=1) >= -1e-3), "every curve rises"
    np.testing.assert_allclose(
        curves[:, [0, -1], :],
        np.broadcast_to([0.0, 255.0], (16, 3, 2)).transpose(0, 2, 1),
        atol=1e-3,
    )
    np.testing.assert_array_equal(
        bent[:, :, 0, :], bent[:, :, 3, :]
    )  # a pixel's map depends on its value only
    deviation = np.abs(curves - ramp[None, :, None]).max(axis=1)
    assert deviation.max() > 20 and np.unique(np.round(deviation, 2)).size > 24, (
        "curves differ by image, channel"
    )
    assert np.allclose(
        np.asarray(RandomToneCurve(0.0, seed=4)(images, training=True)), images, atol=1e-3
    )
