"""Channel statistics of a feature map: the robust recipe's summary of a cell's texture.

Each channel's mean and standard deviation over the map's positions say which local patterns a
cell holds and how unevenly, not where: texture statistics in the sense of Gatys et al. (2015)
and of adaptive instance normalisation (Huang and Belongie, 2017). Random convolutional features
with pooling are known to carry much of what trained ones do (Jarrett et al. 2009; Saxe et al.
2011), and offline the backbone is random. Read from ResNet50's third stage (28x28 positions at
224 px), they give 1,024 values per cell instead of the last stage's 100,352; of the four stages'
statistics they told blasts from the other cells of both labs best, and better than the last
stage's whole map (benchmarks/README.md, "Robustness").
"""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["POOLING_LAYER_NAME", "SpatialMeanStd"]

POOLING_LAYER_NAME = "feature_pooling"
# Keeps the gradient of the square root finite for a channel that is zero everywhere.
_EPSILON = 1e-6


@keras.saving.register_keras_serializable(package="aml_smear")
class SpatialMeanStd(keras.layers.Layer):
    """`(batch, h, w, c)` -> `(batch, 2c)`: every channel's spatial mean, then its standard deviation.

    Always computed in float32, whatever dtype it is given: a variance over hundreds of
    positions loses most of its digits in bfloat16.
    """

    def __init__(self, **kwargs):
        super().__init__(**{**kwargs, "dtype": "float32"})

    def call(self, inputs):
        mean = ops.mean(inputs, axis=(1, 2))
        variance = ops.mean(ops.square(inputs - mean[:, None, None, :]), axis=(1, 2))
        return ops.concatenate([mean, ops.sqrt(variance + _EPSILON)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 * input_shape[-1])
