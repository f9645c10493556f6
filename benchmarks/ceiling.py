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


def gemm_shapes(model, batch: int) -> dict[tuple[int, int, int], int]:
    """The matrix products a batch of cells costs, as im2col GEMMs: (M, K, N) -> how many.

    A convolution with a kh x kw x c_in kernel, c_out filters and an h_out x w_out output is the
    product of a (batch * h_out * w_out, kh * kw * c_in) matrix with a (kh * kw * c_in, c_out)
    one; a dense layer of (batch, c_in) with (c_in, c_out).
    """
    import keras

    shapes: dict[tuple[int, int, int], int] = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            for shape, count in gemm_shapes(layer, batch).items():
                shapes[shape] = shapes.get(shape, 0) + count
            continue
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, c_in, c_out = layer.kernel.shape
            _, h_out, w_out, _ = layer.output.shape
            shape = (batch * h_out * w_out, kh * kw * c_in, c_out)
        elif isinstance(layer, keras.layers.Dense):
            c_in, c_out = layer.kernel.shape
            shape = (batch, c_in, c_out)
        else:
            continue
        shapes[shape] = shapes.get(shape, 0) + 1
    return shapes


def gemm_ceiling_cells_per_s(model, dtype: str, batch: int = 32, repeats: int = 2) -> float:
    """Cells/s if every convolution ran at the rate TensorFlow's matrix product reaches on that
    layer's own GEMM shape, in ``dtype``: a ceiling at the model's shapes, not at one square size
    (small K or N run below a square product's rate, so a square ceiling overstates them)."""
    import tensorflow as tf

    seconds = 0.0
    for (m, k, n), count in gemm_shapes(model, batch).items():
        a = tf.cast(tf.random.stateless_normal((m, k), seed=(0, 0)), dtype)
        b = tf.cast(tf.random.stateless_normal((k, n), seed=(0, 1)), dtype)
        product = tf.function(lambda a=a, b=b: tf.reduce_sum(tf.linalg.matmul(a, b)[:1, :1]))
        seconds += count * _best_seconds(lambda product=product: product().numpy(), repeats)
    return batch / seconds
