"""Scoring tasks: each Dask worker loads the model once and scores whole Zarr chunk ranges."""

from __future__ import annotations

import logging
import threading

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import storage
from tasks.registry import ModelRef
from tasks.retry import retry_transient_errors

__all__ = ["load_worker_model", "score_shard"]

logger = logging.getLogger(__name__)

# One model per worker process, kept across tasks: loading ResNet50 costs seconds and ~1 GiB.
_MODELS: dict[tuple[str, str], object] = {}
_LOCK = threading.Lock()


def _configure_devices() -> None:
    import tensorflow as tf

    # Grow GPU memory on demand so several workers (or a worker and TensorFlow's own
    # allocator) can share one card; a no-op without GPUs.
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            logger.warning("GPU %s was initialised before memory growth could be set", gpu.name)


def load_worker_model(model: ModelRef, storage_options: dict, precision: str = "float32"):
    """This process's copy of the model, loaded (safe mode) on first use and cached."""
    key = (model.version, precision)
    with _LOCK:
        if key in _MODELS:
            return _MODELS[key]
        from aml_model.io import load_model
        from aml_model.predict import with_precision

        _configure_devices()
        local = storage.local_copy(model.url, storage_options, f"{model.version}.keras")
        loaded = with_precision(load_model(local, compile=False), precision)
        _MODELS.clear()  # keep one model per worker: a new version replaces the old one
        _MODELS[key] = loaded
        return loaded


@task(name="score-shard", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
      retry_condition_fn=retry_transient_errors)
def score_shard(
    start: int,
    stop: int,
    indices: list[int],
    cells_url: str,
    marker_url: str,
    model: ModelRef,
    fingerprint: str,
    batch_size: int,
    precision: str,
    store_options: dict,
) -> int:
    """Score the accepted cells in Zarr slots [start, stop) and write their probabilities.

    The range covers whole chunks, so this task alone writes them. A marker written after
    the probabilities makes a rerun with the same model and cells skip the shard.

    Returns:
        The number of cells scored.
    """
    if storage.exists(marker_url, store_options):
        marker = storage.read_json(marker_url, store_options)
        if marker.get("plan") == fingerprint and marker.get("model_version") == model.version:
            return marker["scored"]
    from aml_model.predict import predict_batch

    keras_model = load_worker_model(model, store_options, precision)
    block = np.full(stop - start, np.nan, np.float32)
    if indices:
        images = storage.open_cells_array(cells_url, store_options)[start:stop]
        rows = np.asarray(indices, dtype=np.int64) - start
        block[rows] = predict_batch(keras_model, images[rows], batch_size=batch_size)
    probabilities = storage.open_cells_array(cells_url, store_options, name=storage.PROBABILITIES, read_only=False)
    probabilities[start:stop] = block
    storage.write_json(marker_url, {"plan": fingerprint, "model_version": model.version, "scored": len(indices)},
                       store_options)
    return len(indices)
