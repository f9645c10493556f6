"""The inference form of the paper's model: BatchNorm folded into the convolutions, one compiled step.

The registry keeps the paper's architecture. For scoring, each worker derives this form when it
loads a model: every frozen BatchNormalization of ResNet50 is folded into the convolution before
it (W' = W * s, b' = (b - mean) * s + beta, s = gamma / sqrt(var + eps), in float64), and the
BatchNorm layer becomes an identity. The graph keeps ResNet50's layer names. Without the
separate BatchNorm ops, oneDNN fuses convolution + bias + ReLU (+ residual add), which is
faster in float32 and is what makes bfloat16 pay off: Keras' BatchNormalization computes in
float32 even under a bfloat16 policy, so the unfolded graph casts back and forth around
every convolution.

Scoring then runs through one ``tf.function`` per model with a fixed batch shape (the last
batch is padded), taking uint8 cells and normalising inside the graph.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from aml_model.architecture import (
    BACKBONE_NAME,
    FEATURE_NORMALISATION_NAME,
    INPUT_NORMALISATION_LAYERS,
    OUTPUT_LAYER_NAME,
    copy_layer_weights,
    head_layer_names,
)
from aml_model.config import ScoringConfig

__all__ = [
    "INFERENCE_PRECISIONS",
    "REDUCED_PRECISION_MAX_ABS_DP",
    "BatchScorer",
    "fold_batch_norm",
    "inference_model",
]

#: Keras dtypes the folded graph computes in; the sigmoid stays float32 in every case.
INFERENCE_PRECISIONS = ("float32", "bfloat16", "float16")

#: The accuracy guard of the reduced precisions: the largest per-cell blast probability difference
#: a bfloat16 or float16 form may show against float32 (the tests and the scoring benchmark hold
#: them to it).
REDUCED_PRECISION_MAX_ABS_DP = 0.05


class _FoldedBatchNorm(keras.layers.Layer):
    """Where a BatchNormalization was: its effect now lives in the convolution before it."""

    def call(self, inputs, training=None, mask=None):
        return inputs


def _folded_conv_weights(
    conv: keras.layers.Conv2D, bn: keras.layers.BatchNormalization
) -> list[np.ndarray]:
    """Kernel and bias of ``conv`` followed by the frozen ``bn``, computed in float64."""
    kernel, *bias = (w.astype(np.float64) for w in conv.get_weights())
    bias = bias[0] if bias else np.zeros(kernel.shape[-1])
    gamma, beta, mean, variance = (w.astype(np.float64) for w in bn.get_weights())
    scale = gamma / np.sqrt(variance + bn.epsilon)
    return [(kernel * scale).astype(np.float32), ((bias - mean) * scale + beta).astype(np.float32)]


def _batch_norm_pairs(
    backbone: keras.Model,
) -> list[tuple[keras.layers.Conv2D, keras.layers.BatchNormalization]]:
    """Each convolution of ``backbone`` with the BatchNormalization that takes its output.

    Raises:
        ValueError: a convolution whose output no BatchNormalization takes (its folded copy would
            keep the clone's random initial weights), or a BatchNormalization that does not
            follow a convolution (there is nothing to fold it into).
    """
    convolutions = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)]
    producer = {id(conv.output): conv for conv in convolutions}
    follows: dict[str, keras.layers.BatchNormalization] = {}
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            conv = producer.get(id(layer.input))
            if conv is None:
                message = f"BatchNormalization {layer.name!r} does not follow a convolution: nothing to fold it into"
                raise ValueError(message)
            follows[conv.name] = layer
    unfolded = [conv.name for conv in convolutions if conv.name not in follows]
    if unfolded:
        message = (
            f"convolution(s) {', '.join(unfolded)} have no BatchNormalization after them to fold; "
            "fold_batch_norm takes a backbone whose every Conv2D is followed by one (ResNet50)"
        )
        raise ValueError(message)
    return [(conv, follows[conv.name]) for conv in convolutions]


def fold_batch_norm(backbone: keras.Model, dtype: str = "float32") -> keras.Model:
    """A copy of a frozen ResNet50 with every BatchNormalization folded into its convolution.

    Args:
        backbone: the frozen ``resnet50`` sub-model of the paper's model.
        dtype: Keras dtype of the copy's variables and computations ("float32",
            "bfloat16" or "float16").

    Returns:
        A model with the same layer names, inputs and outputs `(batch, s, s, 3)` -> the
        backbone's output (`(batch, s/32, s/32, 2048)` for the paper); BatchNorm layers are
        identities and the convolutions carry the folded weights. In float32 its outputs match
        the original within float rounding (about 1e-5 relative).

    Raises:
        ValueError: a Conv2D without a BatchNormalization after it, or a BatchNormalization
            not after a Conv2D: every convolution of the copy carries folded weights or there is
            no copy.
    """

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, keras.layers.BatchNormalization):
            return _FoldedBatchNorm(name=layer.name, dtype=dtype)
        config = layer.get_config()
        config["dtype"] = dtype
        return layer.__class__.from_config(config)

    pairs = _batch_norm_pairs(backbone)  # before cloning: refuses a convolution it could not fold
    folded = keras.models.clone_model(backbone, clone_function=clone)
    for conv, bn in pairs:
        folded.get_layer(conv.name).set_weights(_folded_conv_weights(conv, bn))
    for layer in backbone.layers:
        if layer.weights and not isinstance(
            layer, keras.layers.Conv2D | keras.layers.BatchNormalization
        ):
            folded.get_layer(layer.name).set_weights(layer.get_weights())
    folded.trainable = False
    return folded


def inference_model(model: keras.Model, precision: str = "float32") -> keras.Model:
    """The scoring form of a paper model: folded backbone + the same head, in ``precision``.

    Args:
        model: the paper's model (``image -> [scale_normalisation, stain_normalisation] -> resnet50
            -> flatten -> dense -> blast_probability``), or a recipe's (:func:`build_model`).
        precision: "float32", "bfloat16" (CPUs with AMX or AVX-512 BF16) or "float16" (GPUs).

    Returns:
        A model `(batch, s, s, 3)` ResNet50-normalised float32 -> `(batch, 1)` float32 blast
        probability. Only the final sigmoid layer stays float32.
    """
    if precision not in INFERENCE_PRECISIONS:
        message = f"precision {precision!r} is not one of {', '.join(INFERENCE_PRECISIONS)}"
        raise ValueError(message)
    backbone = fold_batch_norm(model.get_layer(BACKBONE_NAME), precision)
    inputs = keras.Input(model.input_shape[1:], name="image")
    images = inputs
    for original in model.layers:
        if original.name in INPUT_NORMALISATION_LAYERS:
            # Statistics over a whole image stay float32 in every precision.
            images = original.__class__.from_config(original.get_config())(images)
    outputs = backbone(images, training=False)
    for name in head_layer_names(model):
        original = model.get_layer(name)
        config = original.get_config()
        # The probability, and the feature statistics it is computed from, stay float32.
        config["dtype"] = (
            "float32" if name in (OUTPUT_LAYER_NAME, FEATURE_NORMALISATION_NAME) else precision
        )
        layer = original.__class__.from_config(config)
        outputs = layer(outputs)
        copy_layer_weights(original, layer)
    return keras.Model(inputs, outputs, name=f"{model.name}_inference_{precision}")


class BatchScorer:
    """Blast probabilities for uint8 cells through one compiled step of fixed batch size.

    A fixed batch shape means one trace for the life of the worker; the last, short batch is
    padded with zeros and the padding's outputs dropped.

    Args:
        model: an :func:`inference_model` (or any model taking ResNet50-normalised cells).
        batch_size: cells per forward pass.
    """

    def __init__(self, model: keras.Model, batch_size: int = ScoringConfig.batch_size) -> None:
        from aml_model.preprocess import normalise_for_resnet50

        self.model = model
        self.batch_size = batch_size
        self.image_shape = tuple(int(d) for d in model.input_shape[1:])
        signature = tf.TensorSpec((batch_size, *self.image_shape), tf.uint8)

        @tf.function(input_signature=[signature], jit_compile=False)
        def step(images: tf.Tensor) -> tf.Tensor:
            normalised = normalise_for_resnet50(tf.cast(images, tf.float32))
            return tf.reshape(tf.cast(model(normalised, training=False), tf.float32), [-1])

        self._step: Callable[[tf.Tensor], tf.Tensor] = step

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Score `(n, s, s, 3)` uint8 cells; returns `(n,)` float32 probabilities in [0, 1]."""
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            expected = ", ".join(map(str, self.image_shape))
            message = f"images of shape {images.shape} do not fit the model input (n, {expected})"
            raise ValueError(message)
        out = np.empty(len(images), np.float32)
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            n = len(batch)
            if n < self.batch_size:
                batch = np.concatenate(
                    [batch, np.zeros((self.batch_size - n, *self.image_shape), np.uint8)]
                )
            out[start : start + n] = self._step(tf.constant(batch, tf.uint8)).numpy()[:n]
        return out
