"""Grad-CAM for the paper's model: which parts of a cell drove its blast probability.

Grad-CAM (Selvaraju et al., 2017) weights each channel of a convolutional feature map by the
mean gradient of the class score over that map, sums the channels and keeps the positive part.
Here the feature map is the one the head reads: for the paper ResNet50's last block,
``conv5_block3_out`` (`(s/32, s/32, 2048)`: 7x7 for the paper's 224 px input, 2x2 at 64 px, a
single cell at 32 px, where the heatmap is necessarily flat), for a pooled recipe the map its
channel statistics are taken from (``conv3_block4_out``: 28x28 at 224 px). The class score is
the logit of the sigmoid output (its pre-activation), whose gradient does not vanish for cells
the model is already sure about.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from aml_model.architecture import (
    BACKBONE_NAME,
    OUTPUT_LAYER_NAME,
    feature_extractor,
    head_layer_names,
)
from aml_model.pooling import POOLING_LAYER_NAME
from aml_model.preprocess import normalise_for_resnet50

__all__ = ["GradCam", "build_gradcam_model", "compute_gradcam", "overlay_heatmaps"]


@dataclass(frozen=True)
class GradCam:
    """Grad-CAM of a stack of cells.

    Attributes:
        heatmaps: `(n, s, s)` float32 in [0, 1], each scaled to its own maximum (all zeros
            when nothing in the cell raised the logit).
        overlays: `(n, s, s, 3)` uint8 RGB, the cell under the heatmap in the "jet" colour map.
        logits: `(n,)` float32, the blast logit of each cell.
        probabilities: `(n,)` float32 in [0, 1], sigmoid of the logits.
    """

    heatmaps: np.ndarray
    overlays: np.ndarray
    logits: np.ndarray
    probabilities: np.ndarray


def build_gradcam_model(model: keras.Model) -> keras.Model:
    """A model from the input of the paper's model (or a recipe's) to the feature map the head
    reads and the blast logit.

    The backbone is nested as a sub-model, so its inner layers are not in the outer graph
    (``model.get_layer(...).output`` of an inner layer gives "Graph disconnected"). The
    backbone's own graph gives the map (its output, or the input of its pooling layer) and its
    output; the model's input normalisation before it and its head layers after it (all but the
    last) are re-applied in a new graph, and the final Dense layer's kernel and bias give the
    logit without its sigmoid. All weights are shared with ``model``.

    Args:
        model: a model from :func:`aml_model.architecture.build_model`, or one loaded from
            a .keras file of that architecture.

    Returns:
        A Keras model `(batch, s, s, 3)` ResNet50-normalised float32 ->
        [`(batch, h, w, c)` feature map, `(batch, 1)` logit]; the paper's map is
        `(s/32, s/32, 2048)`.
    """
    backbone = model.get_layer(BACKBONE_NAME)
    pooled = any(layer.name == POOLING_LAYER_NAME for layer in backbone.layers)
    feature_map = backbone.get_layer(POOLING_LAYER_NAME).input if pooled else backbone.output
    cut = keras.Model(backbone.inputs, [feature_map, backbone.output], name="gradcam_backbone")
    # The recipe's scale and colour normalisation first, as the model applies them.
    extractor = feature_extractor(model, cut)
    inputs = extractor.input
    feature_map, features = extractor.outputs
    hidden = features
    for name in head_layer_names(model)[:-1]:
        hidden = model.get_layer(name)(hidden)
    final = model.get_layer(OUTPUT_LAYER_NAME)
    logit = keras.ops.matmul(keras.ops.cast(hidden, "float32"), final.kernel) + final.bias
    return keras.Model(inputs, [feature_map, logit], name="gradcam")


def _cam(feature_maps: tf.Tensor, gradients: tf.Tensor) -> np.ndarray:
    """`(n, h, w)` Grad-CAM maps in [0, 1] from `(n, h, w, c)` feature maps and their gradients."""
    channel_weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(channel_weights * feature_maps, axis=-1)).numpy()
    peak = cam.max(axis=(1, 2), keepdims=True)
    # A map with no positive evidence stays all zeros instead of dividing by zero.
    return np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0).astype(np.float32)


def compute_gradcam(
    model: keras.Model,
    images: np.ndarray,
    batch_size: int = 16,
    gradcam_model: keras.Model | None = None,
) -> GradCam:
    """Grad-CAM heatmaps and overlays of the blast class for a stack of cells.

    Args:
        model: the paper's model (see :func:`build_gradcam_model`).
        images: `(n, s, s, 3)` uint8 RGB cells, s = the model's input size; they are
            normalised for ResNet50 here, as :func:`aml_model.data.make_dataset` does for
            inference (the model holds no preprocessing layer).
        batch_size: cells per forward and backward pass.
        gradcam_model: a model from :func:`build_gradcam_model` to reuse across calls.

    Returns:
        A :class:`GradCam`; the maps, feature-map-sized (`(s/32, s/32)` for the paper), are
        upsampled bilinearly to `(s, s)`.
    """
    expected = tuple(model.input_shape[1:])
    if images.ndim != 4 or tuple(images.shape[1:]) != expected or images.dtype != np.uint8:
        message = (
            f"images of shape {images.shape} and dtype {images.dtype} do not fit the model input "
            f"(n, {', '.join(map(str, expected))}) uint8"
        )
        raise ValueError(message)
    gradcam_model = gradcam_model or build_gradcam_model(model)
    size = expected[:2]
    heatmaps, logits = [np.zeros((0, *size), np.float32)], [np.zeros((0,), np.float32)]
    for start in range(0, len(images), batch_size):
        batch = tf.convert_to_tensor(
            normalise_for_resnet50(images[start : start + batch_size].astype(np.float32))
        )
        with tf.GradientTape() as tape:
            feature_maps, logit = gradcam_model(batch, training=False)
        gradients = tape.gradient(logit, feature_maps)
        cam = _cam(tf.cast(feature_maps, tf.float32), tf.cast(gradients, tf.float32))
        upsampled = tf.image.resize(cam[..., np.newaxis], size, method="bilinear").numpy()[..., 0]
        heatmaps.append(np.clip(upsampled, 0.0, 1.0))
        logits.append(np.asarray(logit, np.float32).reshape(-1))
    heatmaps_all, logits_all = np.concatenate(heatmaps), np.concatenate(logits)
    return GradCam(
        heatmaps=heatmaps_all,
        overlays=overlay_heatmaps(images, heatmaps_all),
        logits=logits_all,
        probabilities=(1.0 / (1.0 + np.exp(-logits_all.astype(np.float64)))).astype(np.float32),
    )


def overlay_heatmaps(images: np.ndarray, heatmaps: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend heatmaps in the "jet" colour map over their cells.

    Args:
        images: `(n, s, s, 3)` uint8 RGB cells.
        heatmaps: `(n, s, s)` float in [0, 1].
        alpha: weight of the heatmap colour, in [0, 1].

    Returns:
        `(n, s, s, 3)` uint8 RGB.
    """
    from matplotlib import colormaps

    colours = colormaps["jet"](np.clip(heatmaps, 0.0, 1.0))[..., :3] * 255.0
    blended = (1.0 - alpha) * images.astype(np.float32) + alpha * colours
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
