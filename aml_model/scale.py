"""Scale normalisation: show every cell at the same apparent size, whatever the lab's pixel size.

Labs scan at different microns per pixel and crop differently (LMU 400x400 px crops, CellaVision
360x363), so after resizing to the model input the same neutrophil is about 1.3x wider in one lab
than in the other (benchmarks/bench_robustness.py measures it). A model trained on blasts from one
lab and normal cells from the other learns "large = this lab = blast". Pathology tools normalise to a
physical scale; single-cell crops carry no microns-per-pixel, but each holds its own ruler: the
stained nucleus of the cell in the middle. This layer zooms each image about that nucleus so that
its equivalent diameter is a fixed share of the image. Size relative to the surrounding red cells
(about 7.5 um everywhere) stays visible: a large blast keeps small-looking red cells around it.

The nucleus is taken as the pixels whose green channel is below half the image's bright
background level (the 95th percentile), which holds for May-Gruenwald-Giemsa and Pappenheim stains
in both labs here; red cells and cytoplasm stay above it. The zoom is clamped, so a failed
measurement (no nucleus, or several cells) changes an image at most by the clamp.
"""

from __future__ import annotations

import keras
import tensorflow as tf

__all__ = [
    "SCALE_LAYER_NAME",
    "ScaleNormalisation",
    "normalise_scale",
    "nucleus_boxes",
    "nucleus_diameter",
]

SCALE_LAYER_NAME = "scale_normalisation"
#: Nucleus equivalent diameter after normalisation, as a share of the image side (a LMU myeloblast's
#: is about 0.45 of a 224 px crop, so blasts of that lab are left as they are).
TARGET_DIAMETER = 0.45
#: The zoom stays within these factors (1 = unchanged; only zooming in, so no border is invented).
ZOOM_RANGE = (1.0, 2.5)
# ResNet50's input is BGR with the ImageNet means subtracted; the green mean restores 0..255.
_GREEN_MEAN = 116.779


def nucleus_diameter(green):
    """Equivalent diameter (pixels) and centroid (fractions of the side) of the dark nucleus.

    Args:
        green: `(batch, h, w)` green channel in 0..255.

    Returns:
        `(batch,)` diameters and `(batch, 2)` (y, x) centroids in [0, 1] (the centre when no
        pixel is dark enough).
    """
    shape = tf.shape(green)
    flat = tf.reshape(green, (shape[0], -1))
    top = tf.math.top_k(flat, k=tf.maximum(1, tf.shape(flat)[1] // 20)).values
    background = top[:, -1]
    mask = tf.cast(green < 0.5 * background[:, None, None], tf.float32)
    area = tf.reduce_sum(mask, axis=(1, 2))
    diameter = 2.0 * tf.sqrt(area / 3.14159265)
    ys = (tf.cast(tf.range(shape[1]), tf.float32) + 0.5) / tf.cast(shape[1], tf.float32)
    xs = (tf.cast(tf.range(shape[2]), tf.float32) + 0.5) / tf.cast(shape[2], tf.float32)
    safe = tf.maximum(area, 1.0)
    cy = tf.where(area > 0, tf.reduce_sum(mask * ys[None, :, None], axis=(1, 2)) / safe, 0.5)
    cx = tf.where(area > 0, tf.reduce_sum(mask * xs[None, None, :], axis=(1, 2)) / safe, 0.5)
    return diameter, tf.stack([cy, cx], axis=1)


def nucleus_boxes(images, green_offset: float = _GREEN_MEAN):
    """The window of each image that :func:`normalise_scale` zooms to.

    Args:
        images: `(batch, h, w, 3)` float tensor whose channel 1 plus ``green_offset`` is green
            in 0..255 (ResNet50's input space by default; 0 for plain RGB).
        green_offset: added to channel 1 to get green in 0..255.

    Returns:
        `(batch, 4)` float32 boxes (y0, x0, y1, x1) in fractions of the side, as
        ``tf.image.crop_and_resize`` takes them.
    """
    images = tf.cast(images, tf.float32)
    shape = tf.shape(images)
    diameter, centre = nucleus_diameter(images[..., 1] + green_offset)
    side = tf.cast(tf.minimum(shape[1], shape[2]), tf.float32)
    zoom = tf.clip_by_value(TARGET_DIAMETER * side / tf.maximum(diameter, 1.0), *ZOOM_RANGE)
    half = 0.5 / zoom
    # Keep the window inside the image: move it towards the nucleus as far as that allows.
    cy = tf.clip_by_value(centre[:, 0], half, 1.0 - half)
    cx = tf.clip_by_value(centre[:, 1], half, 1.0 - half)
    return tf.stack([cy - half, cx - half, cy + half, cx + half], axis=1)


def normalise_scale(images, green_offset: float = _GREEN_MEAN):
    """Zoom each image about its nucleus so that the nucleus spans :data:`TARGET_DIAMETER`.

    Args:
        images: `(batch, h, w, 3)` float tensor whose channel 1 plus ``green_offset`` is green
            in 0..255 (ResNet50's input space by default; 0 for plain RGB).
        green_offset: added to channel 1 to get green in 0..255.

    Returns:
        A float32 tensor of the same shape.
    """
    images = tf.cast(images, tf.float32)
    shape = tf.shape(images)
    boxes = nucleus_boxes(images, green_offset)
    return tf.image.crop_and_resize(images, boxes, tf.range(shape[0]), (shape[1], shape[2]))


@keras.saving.register_keras_serializable(package="aml_smear")
class ScaleNormalisation(keras.layers.Layer):
    """:func:`normalise_scale` as a Keras layer on ResNet50-normalised `(batch, h, w, 3)` input."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("name", SCALE_LAYER_NAME)
        super().__init__(**kwargs)

    def call(self, inputs):
        return normalise_scale(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape
