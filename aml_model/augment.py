"""Training-time augmentation with Keras preprocessing layers."""

from __future__ import annotations

import keras

from aml_model.config import AugmentConfig

__all__ = ["RandomToneCurve", "build_augmenter"]


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

        layers.append(
            RandomStainTransfer(config.stain_transfer, seed=seed, name="random_stain_transfer")
        )
    if config.hue:
        layers.append(keras.layers.RandomHue(config.hue, value_range=value_range, seed=seed))
    if config.saturation:
        # Keras' saturation factor maps 0.5 to "unchanged", 0 to grey and 1 to fully saturated.
        half = config.saturation / 2
        layers.append(
            keras.layers.RandomSaturation(
                (0.5 - half, 0.5 + half), value_range=value_range, seed=seed
            )
        )
    if config.brightness:
        layers.append(
            keras.layers.RandomBrightness(config.brightness, value_range=value_range, seed=seed)
        )
    if config.contrast:
        layers.append(
            keras.layers.RandomContrast(config.contrast, value_range=value_range, seed=seed)
        )
    if config.rotation_degrees:
        layers.append(
            keras.layers.RandomRotation(config.rotation_degrees / 360.0, seed=seed, **fill)
        )
    if config.width_shift or config.height_shift:
        layers.append(
            keras.layers.RandomTranslation(
                config.height_shift, config.width_shift, seed=seed, **fill
            )
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
class RandomToneCurve(keras.layers.Layer):
    """A random monotone tone curve per image and colour channel.

    Labs differ by more than a gain and an offset per channel: stain uptake saturates and a
    camera's response bends each channel's intensities, which a per-image standardisation cannot
    undo. Each channel of each image is mapped through a curve that is piecewise linear between
    ``knots`` evenly spaced inputs, whose outputs rise by random shares of 0..255 (exponential
    draws, normalised: a random monotone map onto 0..255), blended with the identity by a weight
    drawn uniformly from ``[0, strength]``. Strength 0 leaves images alone, 1 allows any such
    curve. Per-channel histogram matching between labs is a map of this kind. In inference
    images pass through.

    Args:
        strength: the largest weight of the random curve against the identity, in [0, 1].
        knots: inputs at which the curve bends (including 0 and 255).
        seed: seeds the draws.

    Input and output: `(batch, h, w, 3)` RGB floats in 0..255.
    """

    def __init__(self, strength: float, knots: int = 6, seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.strength, self.knots, self.seed = strength, knots, seed
        self._generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        from keras import ops

        images = ops.cast(inputs, "float32")
        batch, height, width = ops.shape(images)[0], ops.shape(images)[1], ops.shape(images)[2]
        segments = self.knots - 1
        rises = -ops.log(
            keras.random.uniform((batch, 3, segments), 1e-6, 1.0, seed=self._generator)
        )
        curve = ops.cumsum(rises / ops.sum(rises, axis=-1, keepdims=True), axis=-1)
        identity = ops.linspace(1.0 / segments, 1.0, segments)
        weight = keras.random.uniform((batch, 1, 1), 0.0, self.strength, seed=self._generator)
        knots = ops.concatenate(
            [ops.zeros((batch, 3, 1)), (1 - weight) * identity + weight * curve], axis=-1
        )
        # (batch, 3, pixels): each channel's intensities, placed on the curve's segments.
        position = (
            ops.transpose(ops.reshape(ops.clip(images, 0.0, 255.0), (batch, -1, 3)), (0, 2, 1))
            / 255.0
        )
        position = position * segments
        lower = ops.cast(ops.minimum(ops.floor(position), segments - 1), "int32")
        fraction = position - ops.cast(lower, "float32")
        start = ops.take_along_axis(knots, lower, axis=-1)
        end = ops.take_along_axis(knots, lower + 1, axis=-1)
        mapped = 255.0 * (start + fraction * (end - start))
        return ops.reshape(ops.transpose(mapped, (0, 2, 1)), (batch, height, width, 3))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "strength": self.strength,
            "knots": self.knots,
            "seed": self.seed,
        }
