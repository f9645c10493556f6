"""Batch inference with a loaded model."""

from __future__ import annotations

import keras
import numpy as np

from aml_model.data import make_dataset

__all__ = ["PRECISIONS", "predict_batch", "with_precision"]


def predict_batch(model: keras.Model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
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


PRECISIONS = {"float32": None, "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def with_precision(model: keras.Model, precision: str) -> keras.Model:
    """Return ``model`` computing in ``precision``: "float32", "bfloat16" (CPUs with AMX or
    AVX-512 BF16) or "float16" (GPUs). Variables and the sigmoid output stay float32.

    A reduced-precision copy is rebuilt with the paper's architecture under Keras' mixed
    policy and given the same weights.
    """
    from aml_model.architecture import build_model
    from aml_model.config import ModelConfig

    if precision not in PRECISIONS:
        message = f"precision {precision!r} is not one of {', '.join(PRECISIONS)}"
        raise ValueError(message)
    policy = PRECISIONS[precision]
    if policy is None:
        return model
    config = ModelConfig(image_size=int(model.input_shape[1]), head_units=int(model.get_layer("dense").units),
                         backbone_weights="none")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        reduced = build_model(config)
    finally:
        keras.config.set_dtype_policy(previous)
    reduced.set_weights(model.get_weights())
    return reduced
