"""Fit the paper's model: augmentation, early stopping on validation loss, best weights restored."""

from __future__ import annotations

import logging
from collections.abc import Callable

import keras
import numpy as np

from aml_model.architecture import (
    FEATURE_NORMALISATION_NAME,
    adapt_feature_normalisation,
    feature_extractor,
)
from aml_model.augment import build_augmenter
from aml_model.config import TrainConfig
from aml_model.preprocess import normalise_for_resnet50
from aml_model.zarr_rows import read_cells

__all__ = [
    "EpochReport",
    "TrainingHistory",
    "cell_batches",
    "feature_batches",
    "train_head",
    "train_model",
]

logger = logging.getLogger(__name__)

#: Per-epoch metric lists, e.g. {"loss": [...], "val_loss": [...], "accuracy": [...], ...}.
TrainingHistory = dict[str, list[float]]


class EpochReport(keras.callbacks.Callback):
    """A Keras callback that hands each finished epoch to ``report(epoch, epochs, logs)``.

    ``epoch`` counts from 1, ``epochs`` is the most the fit may run (early stopping may end it
    sooner), ``logs`` holds the epoch's metrics (loss, val_loss, val_auc, ...) as floats.
    """

    def __init__(self, report: Callable[[int, int, dict[str, float]], None]) -> None:
        super().__init__()
        self._report = report

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._report(
            epoch + 1,
            int(self.params.get("epochs") or 0),
            {key: float(value) for key, value in (logs or {}).items()},
        )


def train_model(
    model: keras.Model,
    train_images,
    train_labels: np.ndarray,
    val_images,
    val_labels: np.ndarray,
    config: TrainConfig,
    callbacks: list[keras.callbacks.Callback] | None = None,
    train_weights: np.ndarray | None = None,
    val_weights: np.ndarray | None = None,
) -> tuple[TrainingHistory, int]:
    """Train a compiled model with the paper's procedure.

    Training batches are shuffled and augmented each epoch; validation batches are not. A pooled
    model's feature normalisation is first fitted to the training cells' features. Cells
    are read a batch at a time (:func:`cell_batches`), so they may stay in the store.
    Training stops after ``config.early_stopping_patience`` epochs without a lower
    validation loss and the weights of the best epoch are restored.

    Args:
        model: compiled model from :func:`aml_model.architecture.build_model`.
        train_images, val_images: `(n, s, s, 3)` uint8 RGB cells: an array, a Zarr array or
            :class:`aml_model.zarr_rows.Rows`.
        train_labels, val_labels: `(n,)` 0/1 labels, 1 = blast.
        config: epochs, batch size, patience, seed and augmentation.
        callbacks: extra Keras callbacks (progress reporting).
        train_weights: `(n,)` loss weights of the training cells (source and label balance).
        val_weights: `(m,)` weights of the validation cells (see :func:`train_head`).

    Returns:
        The per-epoch history and the 0-based index of the restored (best) epoch.
    """
    keras.utils.set_random_seed(config.seed)
    if FEATURE_NORMALISATION_NAME in [layer.name for layer in model.layers]:
        # Fitted to the backbone's features of the training cells as they are (no augmentation).
        features = feature_extractor(model).predict(
            cell_batches(train_images, None, config.batch_size), verbose=0
        )
        adapt_feature_normalisation(model, features)
    augmenter = build_augmenter(config.augment, seed=config.seed)
    train = cell_batches(
        train_images,
        train_labels,
        config.batch_size,
        train_weights,
        seed=config.seed,
        augmenter=augmenter,
    )
    val = cell_batches(val_images, val_labels, config.batch_size, val_weights)
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss",
        patience=config.early_stopping_patience,
        # Keras restores the best epoch at the end of training, also when no early stop happened.
        restore_best_weights=True,
    )
    fit = model.fit(
        train,
        validation_data=val,
        epochs=config.epochs,
        shuffle=False,
        callbacks=[stopper, *(callbacks or [])],
        verbose=0,
    )
    history = {key: [float(v) for v in values] for key, values in fit.history.items()}
    best_epoch = int(np.argmin(history["val_loss"]))
    logger.info(
        "trained %d epochs; best val_loss %.4f at epoch %d",
        len(history["val_loss"]),
        history["val_loss"][best_epoch],
        best_epoch + 1,
    )
    return history, best_epoch


def feature_batches(
    features,
    labels: np.ndarray | None,
    batch_size: int,
    weights: np.ndarray | None = None,
    seed: int | None = None,
):
    """A tf.data pipeline of rows (cached features, cells), read from their array a batch at a time.

    Each batch's rows are read with :func:`aml_model.zarr_rows.read_cells` when the pipeline
    reaches it and converted to float32, so memory holds a few batches, never the array: it may
    be a Zarr array, :class:`aml_model.zarr_rows.Rows` (rows of the feature cache or of several
    runs' cells) or a NumPy array. The order comes from tf.data's seeded shuffle of row numbers,
    reshuffled every epoch: the same seed gives the same batches whatever the timing of the
    prefetching.

    Args:
        features: `(n, ...)` array-like.
        labels: `(n,)` 0/1, or None (inference: the dataset yields the rows alone).
        batch_size: rows per batch.
        weights: `(n,)` per-row loss weights, or None.
        seed: shuffle with this seed; None keeps the rows' order.

    Returns:
        A dataset of `(batch, ...)` float32 rows with, given ``labels``, `(batch, 1)` float32
        labels and, with ``weights``, `(batch,)` float32 weights.
    """
    import tensorflow as tf

    n = len(features)
    if (labels is not None and len(labels) != n) or (
        weights is not None and (labels is None or len(weights) != n)
    ):
        message = (
            f"{n} rows, {'no' if labels is None else len(labels)} labels, "
            f"{0 if weights is None else len(weights)} weights"
        )
        raise ValueError(message)
    columns = [] if labels is None else [np.asarray(labels, np.float32).reshape(-1, 1)]
    columns += [] if weights is None else [np.asarray(weights, np.float32)]
    row_shape = tuple(features.shape[1:])
    shapes = [(None, *row_shape), *((None, *c.shape[1:]) for c in columns)]

    def load(rows: np.ndarray):
        return [np.asarray(read_cells(features, rows), np.float32), *(c[rows] for c in columns)]

    def load_tensors(rows):
        batch = tf.numpy_function(load, [rows], [tf.float32] * len(shapes))
        for tensor, shape in zip(batch, shapes, strict=True):
            tensor.set_shape(shape)
        return tuple(batch) if columns else batch[0]

    dataset = tf.data.Dataset.range(n)
    if seed is not None:
        dataset = dataset.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).map(load_tensors).prefetch(2)


def cell_batches(
    cells,
    labels: np.ndarray | None,
    batch_size: int,
    weights: np.ndarray | None = None,
    seed: int | None = None,
    augmenter=None,
):
    """:func:`feature_batches` of uint8 cells, augmented (when given an augmenter) and normalised
    for ResNet50 a batch at a time, in order: the same seed gives the same augmentation."""

    # No lambdas here: AutoGraph, which converts what Dataset.map calls, cannot read the source of two
    # lambdas on one line, and warned about it at every training.
    def prepare(x, *rest):
        if augmenter is not None:  # decided when tracing, not a graph condition
            x = augmenter(x, training=True)
        x = normalise_for_resnet50(x)
        return (x, *rest) if rest else x

    return feature_batches(cells, labels, batch_size, weights, seed).map(prepare).prefetch(2)


def train_head(
    head: keras.Model,
    train_features,
    train_labels: np.ndarray,
    val_features,
    val_labels: np.ndarray,
    config: TrainConfig,
    train_weights: np.ndarray | None = None,
    val_weights: np.ndarray | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> tuple[TrainingHistory, int]:
    """Train the classifier head on cached backbone features, with the paper's early stopping.

    Augmentation is already in the features (several augmented views per training cell), so
    batches are only shuffled. A pooled head's feature normalisation is first fitted to the
    training rows (:func:`aml_model.architecture.adapt_feature_normalisation`). Features are read
    a batch at a time (:func:`feature_batches`): given the cache's Zarr array (or
    :class:`aml_model.zarr_rows.Rows` of it), memory holds the model and a few float32 batches,
    however many rows there are.

    Args:
        head: compiled model from :func:`aml_model.architecture.build_head`.
        train_features, val_features: `(n, h, w, c)` backbone outputs, any float dtype, in any
            array-like that :func:`feature_batches` reads.
        train_labels, val_labels: `(n,)` 0/1.
        config: epochs, batch size, patience and seed.
        train_weights: `(n,)` loss weights of the training rows (source and label balance).
        val_weights: `(m,)` weights of the validation rows, so that early stopping watches the
            loss that training minimises (otherwise the most numerous source decides when to stop).
        callbacks: extra Keras callbacks (progress reporting, :class:`EpochReport`).

    Returns:
        The per-epoch history and the 0-based index of the restored (best) epoch.
    """
    keras.utils.set_random_seed(config.seed)
    adapt_feature_normalisation(head, feature_batches(train_features, None, config.batch_size))
    train = feature_batches(
        train_features, train_labels, config.batch_size, train_weights, seed=config.seed
    )
    val = feature_batches(val_features, val_labels, config.batch_size, val_weights)
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=config.early_stopping_patience, restore_best_weights=True
    )
    fit = head.fit(
        train,
        validation_data=val,
        epochs=config.epochs,
        callbacks=[stopper, *(callbacks or [])],
        verbose=0,
        shuffle=False,
    )
    history = {key: [float(v) for v in values] for key, values in fit.history.items()}
    return history, int(np.argmin(history["val_loss"]))
