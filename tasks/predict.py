"""Scoring tasks: each Dask worker loads the model once and scores whole Zarr chunk ranges."""

from __future__ import annotations

import logging
import threading

import numpy as np

from aml_model.precision import AUTO, cpu_flags, resolve_precision
from tasks.cell_tables import accepted_slots
from tasks.registry import ModelRef
from tasks.retry import store_task
from tasks.store import PROBABILITIES, Store
from tasks.store_layout import ScoringPaths

__all__ = [
    "load_worker_model",
    "reuse_probabilities",
    "score_shard",
    "worker_precision",
    "worker_scorer",
]

logger = logging.getLogger(__name__)

# Kept per worker process across tasks: loading ResNet50 costs seconds and ~1 GiB, deriving and
# tracing its inference form a few seconds more. One model version at a time.
_MODELS: dict[str, object] = {}
_SCORERS: dict[tuple[str, str, int], object] = {}
_PRECISIONS: dict[str, str] = {}
_LOCK = threading.RLock()


def _configure_devices() -> None:
    import tensorflow as tf

    # Grow GPU memory on demand so several workers (or a worker and TensorFlow's own
    # allocator) can share one card; a no-op without GPUs.
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            logger.warning("GPU %s was initialised before memory growth could be set", gpu.name)


def load_worker_model(model: ModelRef, store: Store):
    """This process's copy of the paper model, loaded (safe mode) on first use and cached.

    ``model.url`` is read through ``store``: Keras loads local files only, so a remote model is
    copied once per machine (:meth:`tasks.store.Store.local_copy`).
    """
    with _LOCK:
        if model.version in _MODELS:
            return _MODELS[model.version]
        from aml_model.io import load_model

        _configure_devices()
        local = store.local_copy(model.url, f"{model.version}.keras", model.sha256)
        loaded = load_model(local, compile=False)
        # A new version replaces the old one and everything derived from it.
        _MODELS.clear()
        _SCORERS.clear()
        _MODELS[model.version] = loaded
        return loaded


def worker_precision(requested: str, model: ModelRef) -> str:
    """The precision this worker scores ``model`` in: ``requested``, or for "auto" the worker's
    native reduced precision where the model's card shows it agrees with float32
    (:func:`aml_model.precision.resolve_precision`), else float32. Logged once per worker and model."""
    if requested != AUTO:
        return requested
    with _LOCK:
        if model.version not in _PRECISIONS:
            import tensorflow as tf

            from aml_model.inference import REDUCED_PRECISION_MAX_ABS_DP

            gpu = bool(tf.config.list_physical_devices("GPU"))
            _PRECISIONS[model.version], reason = resolve_precision(
                requested, model.precision_agreement, cpu_flags(), gpu, REDUCED_PRECISION_MAX_ABS_DP
            )
            logger.info(
                "model %s scores in %s on this worker: %s",
                model.version,
                _PRECISIONS[model.version],
                reason,
            )
        return _PRECISIONS[model.version]


def worker_scorer(model: ModelRef, store: Store, precision: str, batch_size: int):
    """This process's compiled scorer: the model's folded inference form in ``precision``."""
    key = (model.version, precision, batch_size)
    with _LOCK:
        if key not in _SCORERS:
            from aml_model.inference import BatchScorer, inference_model

            paper_model = load_worker_model(model, store)
            _SCORERS[key] = BatchScorer(inference_model(paper_model, precision), batch_size)
        return _SCORERS[key]


@store_task("score-shard")
def score_shard(
    start: int,
    stop: int,
    decoded: dict | None,
    accepted_table: str,
    cells_url: str,
    probabilities_url: str,
    marker_url: str,
    model: ModelRef,
    fingerprint: str,
    batch_size: int,
    precision: str,
    store: Store,
) -> int:
    """Score the decoded cells in Zarr slots [start, stop) of ``cells_url`` and write their probabilities.

    ``decoded`` is the receipt of the ingest shard that decoded these slots (what
    ``ingest_shard`` returns): every slot whose image decoded, as its records part says, is
    scored. Without it (the ingest finished earlier) the slots are those ``accepted_table``, the
    ingest's cell table, lists in the range. Slots of refused inputs stay NaN in the scoring's own
    ``probabilities_url``. A cell quarantined later as a duplicate within its patient is scored
    too, and left out of the tables. The
    range covers whole chunks, so this task alone writes them. A marker written after the
    probabilities makes a rerun with the same model and cells skip the shard. ``precision``
    "auto" is resolved on the worker (:func:`worker_precision`); the marker records the result.
    The cells, probabilities, marker and model are all read and written through ``store``.

    Returns:
        The number of cells scored.
    """
    precision = worker_precision(precision, model)
    if store.exists(marker_url):
        marker = store.read_json(marker_url)
        if marker == _marker(fingerprint, start, stop, model, precision, marker.get("scored")):
            return marker["scored"]
    if decoded is None:
        rows = accepted_slots(store, accepted_table, start, stop) - start
    else:
        records = store.read_table(decoded["url"], columns=["zarr_index", "reason"])
        rows = records.loc[records["reason"].isna(), "zarr_index"].to_numpy(np.int64) - start
    block = np.full(stop - start, np.nan, np.float32)
    if len(rows):
        scorer = worker_scorer(model, store, precision, batch_size)
        images = store.open_cells_array(cells_url)[start:stop]
        block[rows] = scorer(images[rows])
    probabilities = store.open_cells_array(probabilities_url, name=PROBABILITIES, read_only=False)
    probabilities[start:stop] = block
    store.write_json(marker_url, _marker(fingerprint, start, stop, model, precision, len(rows)))
    return len(rows)


@store_task("reuse-probabilities")
def reuse_probabilities(source: ScoringPaths, target: ScoringPaths) -> int:
    """Copy a finished scoring's probabilities, and the shard markers that say how they were made, into
    another scoring of the same run (:func:`tasks.runs.reusable_probabilities` picks ``source``).

    The probabilities depend on the cells, the model and the precision only, so a scoring that
    differs in anything else has them without running the model; the copy keeps each scoring a
    record of its own, byte for byte what scoring would have written.

    Returns:
        The number of cells with a probability.
    """
    store = target.store
    store.copy_tree(source.probabilities_zarr, target.probabilities_zarr)
    store.copy_tree(source.score_shards, target.score_shards)
    probabilities = store.open_cells_array(target.probabilities_zarr, name=PROBABILITIES)
    return int(np.count_nonzero(~np.isnan(probabilities[:])))


def _marker(
    fingerprint: str, start: int, stop: int, model: ModelRef, precision: str, scored: int | None
) -> dict:
    # Probabilities depend on the cells, the model and the precision: a change of any redoes the
    # shard. The slots go in too: a rerun with other chunks_per_task numbers its shards differently.
    return {
        "plan": fingerprint,
        "slots": [start, stop],
        "model_version": model.version,
        "precision": precision,
        "scored": scored,
    }
