"""The fp32 ceiling of this machine for the paper model: matrix-product GFLOP/s over FLOPs per cell."""

from __future__ import annotations

import time

import numpy as np


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best float32 matrix-product rate of numpy's BLAS on all cores, GFLOP/s (2 n^3 per product)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


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
