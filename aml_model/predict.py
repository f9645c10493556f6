"""Batch inference with a loaded Keras model (training and evaluation; scoring uses :mod:`aml_model.inference`)."""

from __future__ import annotations

import keras
import numpy as np

from aml_model.config import ScoringConfig
from aml_model.data import make_dataset

__all__ = ["predict_batch"]


def predict_batch(
    model: keras.Model, images: np.ndarray, batch_size: int = ScoringConfig.batch_size
) -> np.ndarray:
    """Blast probabilities for a stack of cells.

    Args:
        model: a model from :func:`aml_model.architecture.build_model` or a loaded one.
        images: `(n, s, s, 3)` uint8 RGB cells, s = the model's input size.
        batch_size: cells per forward pass.

    Returns:
        `(n,)` float32 probabilities in [0, 1].
    """
    expected = tuple(model.input_shape[1:])
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        message = f"images of shape {images.shape} do not fit the model input (n, {', '.join(map(str, expected))})"
        raise ValueError(message)
    if len(images) == 0:
        return np.zeros((0,), np.float32)
    probabilities = model.predict(make_dataset(images, batch_size=batch_size), verbose=0)
    return np.asarray(probabilities, np.float32).reshape(-1)
