"""The ceiling of this machine for the paper model: matrix-product GFLOP/s over FLOPs per cell."""

from __future__ import annotations

import time

import numpy as np

N = 4096


def _best_seconds(product, repeats: int) -> float:
    product()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        product()
        best = min(best, time.perf_counter() - started)
    return best


def numpy_matmul_gflops(n: int = N, repeats: int = 3) -> float:
    """Best float32 n x n matrix-product rate of numpy's BLAS on all cores, GFLOP/s (2 n^3 per product)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
    return 2 * n**3 / _best_seconds(lambda: a @ b, repeats) / 1e9


def tensorflow_matmul_gflops(dtype: str = "float32", n: int = N, repeats: int = 3) -> float:
    """Best n x n matrix-product rate of TensorFlow's CPU kernels (oneDNN) in ``dtype``, GFLOP/s.

    numpy's OpenBLAS picks its kernels by CPU vendor and can leave vector units idle (on an
    AMD CPU with AVX-512 it runs AVX2 kernels at half the rate), so a ceiling from numpy alone
    can sit below what the model already reaches.
    """
    import tensorflow as tf

    a = tf.cast(tf.random.stateless_normal((n, n), seed=(0, 0)), dtype)
    b = tf.cast(tf.random.stateless_normal((n, n), seed=(0, 1)), dtype)
    product = tf.function(lambda: tf.reduce_sum(tf.linalg.matmul(a, b)[:1, :1]))
    return 2 * n**3 / _best_seconds(lambda: product().numpy(), repeats) / 1e9


def model_flops_per_cell(model) -> float:
    """Multiply-adds x 2 of every convolution and dense layer of a (nested) Keras model, per cell."""
    import keras

    total = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += model_flops_per_cell(layer)
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw, c_in, c_out = layer.kernel.shape
            _, h_out, w_out, _ = layer.output.shape
            total += 2.0 * h_out * w_out * kh * kw * c_in * c_out
        elif isinstance(layer, keras.layers.Dense):
            c_in, c_out = layer.kernel.shape
            total += 2.0 * c_in * c_out
    return total
