"""Per-image colour standardisation, the layer that makes a lab's stain and white balance invisible.

Labs stain (May-Gruenwald-Giemsa, Pappenheim) and scan (white balance, lamp) differently, so the
same cell type has another colour cast in every lab. A model trained on blasts from one lab and
normal cells from another can learn the cast instead of the cell. Standardising each image's
colour channels to a fixed mean and spread (Reinhard et al. 2001 do this in a decorrelated colour
space against a reference image; here the reference is a fixed target, so no reference image has
to travel with the model) removes any per-channel gain and offset, which is what a change of
stain intensity or white balance mostly is, while keeping shapes, textures and the relative
colours inside the cell.

The layer sits in the saved model before the backbone, so training, feature caching and scoring
all apply it and a reloaded model needs nothing else.
"""

from __future__ import annotations

import keras
from keras import ops

__all__ = [
    "STAIN_LAYER_NAME",
    "TRANSFER_TARGETS",
    "RandomStainTransfer",
    "StainNormalisation",
    "lab_to_rgb",
    "rgb_to_lab",
    "standardise_colour",
]

STAIN_LAYER_NAME = "stain_normalisation"

# Target spread of each channel in ResNet50's mean-centred input space (a typical cell image
# spans roughly +-100 around the ImageNet means); the target mean is 0, the ImageNet mean itself.
_TARGET_STD = 50.0
# Luminance weights in ResNet50's BGR channel order (ITU-R BT.601).
_BGR_LUMA = (0.114, 0.587, 0.299)
_EPSILON = 1.0


def standardise_colour(images, mode: str):
    """Standardise each image's colour (a pure function of the image).

    Args:
        images: `(batch, h, w, 3)` float tensor in ResNet50's input space (BGR, ImageNet means
            subtracted), as :func:`aml_model.preprocess.normalise_for_resnet50` returns.
        mode: "channel" (each channel to mean 0 and spread 50), "grey" (luminance to mean 0 and
            spread 50, copied into the three channels) or "none" (unchanged).

    Returns:
        A float tensor of the same shape. Any per-channel gain a > 0 and offset b of an image
        (``a * x + b``) gives the same output, up to rounding.
    """
    if mode == "none":
        return images
    if mode == "grey":
        images = ops.sum(
            images * ops.convert_to_tensor(_BGR_LUMA, images.dtype), axis=-1, keepdims=True
        )
    elif mode != "channel":
        message = f"stain normalisation {mode!r} is not one of 'none', 'channel', 'grey'"
        raise ValueError(message)
    mean = ops.mean(images, axis=(1, 2), keepdims=True)
    std = ops.std(images, axis=(1, 2), keepdims=True)
    standardised = (images - mean) / (std + _EPSILON) * _TARGET_STD
    return ops.repeat(standardised, 3, axis=-1) if mode == "grey" else standardised


@keras.saving.register_keras_serializable(package="aml_smear")
class StainNormalisation(keras.layers.Layer):
    """:func:`standardise_colour` as a Keras layer: `(batch, h, w, 3)` -> same shape, float32.

    Args:
        mode: "channel" or "grey" (see :func:`standardise_colour`).
    """

    def __init__(self, mode: str = "channel", **kwargs) -> None:
        kwargs.setdefault("name", STAIN_LAYER_NAME)
        super().__init__(**kwargs)
        if mode not in ("channel", "grey"):
            message = f"StainNormalisation mode {mode!r} is not 'channel' or 'grey'"
            raise ValueError(message)
        self.mode = mode

    def call(self, inputs):
        return standardise_colour(ops.cast(inputs, "float32"), self.mode)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


# sRGB (D65) <-> CIE L*a*b*, as scikit-image's rgb2lab/lab2rgb compute it, in backend ops so that
# it runs inside tf.data and Keras models.
_RGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_XYZ_TO_RGB = (
    (3.24048134, -1.53715152, -0.49853633),
    (-0.96925495, 1.87599, 0.04155593),
    (0.05564664, -0.20404134, 1.05731107),
)
_WHITE = (0.95047, 1.0, 1.08883)


def rgb_to_lab(images):
    """`(..., 3)` RGB in 0..255 -> CIE L*a*b* (L in 0..100)."""
    c = ops.clip(images / 255.0, 0.0, 1.0)
    linear = ops.where(c > 0.04045, ops.power((c + 0.055) / 1.055, 2.4), c / 12.92)
    xyz = ops.matmul(linear, ops.transpose(ops.convert_to_tensor(_RGB_TO_XYZ, images.dtype)))
    t = xyz / ops.convert_to_tensor(_WHITE, images.dtype)
    f = ops.where(
        t > 0.008856, ops.power(ops.maximum(t, 1e-12), 1.0 / 3.0), 7.787 * t + 16.0 / 116.0
    )
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return ops.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def lab_to_rgb(lab):
    """Inverse of :func:`rgb_to_lab`: CIE L*a*b* -> `(..., 3)` RGB in 0..255, clipped."""
    fy = (lab[..., 0] + 16.0) / 116.0
    f = ops.stack([lab[..., 1] / 500.0 + fy, fy, fy - lab[..., 2] / 200.0], axis=-1)
    t = ops.where(f > 0.2068966, ops.power(f, 3.0), (f - 16.0 / 116.0) / 7.787)
    xyz = t * ops.convert_to_tensor(_WHITE, lab.dtype)
    linear = ops.matmul(xyz, ops.transpose(ops.convert_to_tensor(_XYZ_TO_RGB, lab.dtype)))
    linear = ops.clip(linear, 0.0, 1.0)
    c = ops.where(
        linear > 0.0031308,
        1.055 * ops.power(ops.maximum(linear, 1e-12), 1 / 2.4) - 0.055,
        12.92 * linear,
    )
    return ops.clip(c, 0.0, 1.0) * 255.0


#: Ranges of the per-image L*a*b* channel means and spreads that :class:`RandomStainTransfer` draws
#: from: (low, high) for L, a, b means, then L, a, b standard deviations. They span the two labs
#: measured here with a margin (LMU: bluish, b mean -19..-6, a spread 12..25; PBC CellaVision:
#: yellowish, b mean -9..14, a spread 5..13; docs/design.md, "Recipes").
TRANSFER_TARGETS = (
    (62.0, 88.0),
    (5.0, 24.0),
    (-22.0, 16.0),
    (10.0, 28.0),
    (5.0, 26.0),
    (8.0, 28.0),
)


@keras.saving.register_keras_serializable(package="aml_smear")
class RandomStainTransfer(keras.layers.Layer):
    """Random Reinhard colour transfer, after RandStainNA (Shen et al., MICCAI 2022).

    In training, each image's L*a*b* channels are standardised and given a mean and spread drawn
    uniformly from :data:`TRANSFER_TARGETS`, which covers every lab of the training data: a blast
    from one lab is shown in the colours of another, so no colour can stand for a class. In
    inference the layer passes images through.

    Args:
        probability: share of images recoloured in each batch.
        seed: seeds the draws.

    Input and output: `(batch, h, w, 3)` RGB floats in 0..255.
    """

    def __init__(self, probability: float = 1.0, seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.probability, self.seed = probability, seed
        self._generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        images = ops.cast(inputs, "float32")
        batch = ops.shape(images)[0]
        lab = rgb_to_lab(images)
        mean = ops.mean(lab, axis=(1, 2), keepdims=True)
        std = ops.std(lab, axis=(1, 2), keepdims=True) + 1e-3
        low = ops.convert_to_tensor([t[0] for t in TRANSFER_TARGETS], "float32")
        high = ops.convert_to_tensor([t[1] for t in TRANSFER_TARGETS], "float32")
        draw = keras.random.uniform((batch, 1, 1, 6), seed=self._generator) * (high - low) + low
        moved = lab_to_rgb((lab - mean) / std * draw[..., 3:] + draw[..., :3])
        chosen = keras.random.uniform((batch, 1, 1, 1), seed=self._generator) < self.probability
        return ops.where(chosen, moved, images)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "probability": self.probability, "seed": self.seed}
