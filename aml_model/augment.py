"""Training-time augmentation with Keras preprocessing layers."""

from __future__ import annotations

import keras

from aml_model.config import AugmentConfig

__all__ = ["build_augmenter"]


def build_augmenter(config: AugmentConfig, seed: int | None = None) -> keras.Sequential:
    """Build the paper's augmentation as a Keras model.

    The layers are active only when called with ``training=True``; in inference they pass
    images through unchanged.

    Args:
        config: rotation (degrees), shift and zoom (fractions) and flips.
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
    if config.rotation_degrees:
        layers.append(keras.layers.RandomRotation(config.rotation_degrees / 360.0, seed=seed, **fill))
    if config.width_shift or config.height_shift:
        layers.append(
            keras.layers.RandomTranslation(config.height_shift, config.width_shift, seed=seed, **fill)
        )
    if config.zoom:
        layers.append(keras.layers.RandomZoom(config.zoom, config.zoom, seed=seed, **fill))
    if flips:
        layers.append(keras.layers.RandomFlip(flips, seed=seed))
    return keras.Sequential(layers, name="augmentation")
