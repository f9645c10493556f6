"""Training-time augmentation with Keras preprocessing layers."""

from __future__ import annotations

import keras

from aml_model.config import AugmentConfig

__all__ = ["RandomChannelGamma", "build_augmenter"]


def build_augmenter(config: AugmentConfig, seed: int | None = None) -> keras.Sequential:
    """Build the training augmentation as a Keras model: colour, then geometry.

    The layers are active only when called with ``training=True``; in inference they pass
    images through unchanged.

    Args:
        config: colour jitter (hue, saturation, brightness, contrast), rotation (degrees),
            shift, zoom and scale (fractions) and flips. The paper's settings have no colour
            jitter and no extra scale range.
        seed: seeds every random layer, for reproducible training.

    Returns:
        A ``keras.Sequential`` taking and returning `(batch, height, width, 3)` float images
        in 0..255.
    """
    flips = {
        (True, True): "horizontal_and_vertical",
        (True, False): "horizontal",
        (False, True): "vertical",
    }.get((config.horizontal_flip, config.vertical_flip))
    fill = {"fill_mode": config.fill_mode}
    layers: list[keras.layers.Layer] = []
    value_range = (0, 255)
    if config.stain_transfer:
        from aml_model.stain import RandomStainTransfer

        layers.append(RandomStainTransfer(config.stain_transfer, seed=seed, name="random_stain_transfer"))
    if config.hue:
        layers.append(keras.layers.RandomHue(config.hue, value_range=value_range, seed=seed))
    if config.saturation:
        # Keras' saturation factor maps 0.5 to "unchanged", 0 to grey and 1 to fully saturated.
        half = config.saturation / 2
        layers.append(keras.layers.RandomSaturation((0.5 - half, 0.5 + half), value_range=value_range, seed=seed))
    if config.brightness:
        layers.append(keras.layers.RandomBrightness(config.brightness, value_range=value_range, seed=seed))
    if config.contrast:
        layers.append(keras.layers.RandomContrast(config.contrast, value_range=value_range, seed=seed))
    if config.rotation_degrees:
        layers.append(keras.layers.RandomRotation(config.rotation_degrees / 360.0, seed=seed, **fill))
    if config.width_shift or config.height_shift:
        layers.append(
            keras.layers.RandomTranslation(config.height_shift, config.width_shift, seed=seed, **fill)
        )
    if config.zoom:
        layers.append(keras.layers.RandomZoom(config.zoom, config.zoom, seed=seed, **fill))
    if config.scale:
        # RandomZoom's factor f draws the image at 1/(1 + f) of its size.
        shrink, grow = config.scale, 1 / (1 + config.scale) - 1
        layers.append(keras.layers.RandomZoom((grow, shrink), (grow, shrink), seed=seed, **fill))
    if flips:
        layers.append(keras.layers.RandomFlip(flips, seed=seed))
    return keras.Sequential(layers, name="augmentation")


@keras.saving.register_keras_serializable(package="aml_smear")
class RandomChannelGamma(keras.layers.Layer):
    """A random tone curve per image and colour channel: ``255 * (x / 255) ** gamma``.

    Labs differ by more than a gain and an offset per channel: stain saturation and a camera's
    response bend each channel's intensities, which a per-image standardisation cannot undo. Each
    channel of each image gets ``gamma = exp(u)``, ``u`` uniform in ``[-strength, strength]``, in
    training; in inference images pass through.

    Args:
        strength: the largest ``|log gamma|``.
        seed: seeds the draws.

    Input and output: `(batch, h, w, 3)` RGB floats in 0..255.
    """

    def __init__(self, strength: float, seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.strength, self.seed = strength, seed
        self._generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        from keras import ops

        images = ops.cast(inputs, "float32")
        draws = keras.random.uniform((ops.shape(images)[0], 1, 1, 3), -self.strength, self.strength,
                                     seed=self._generator)
        return 255.0 * ops.power(ops.clip(images / 255.0, 1e-6, 1.0), ops.exp(draws))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "strength": self.strength, "seed": self.seed}
