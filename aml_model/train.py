"""Fit the paper's model: augmentation, early stopping on validation loss, best weights restored."""

from __future__ import annotations

import logging

import keras
import numpy as np

from aml_model.augment import build_augmenter
from aml_model.config import TrainConfig
from aml_model.data import make_dataset

__all__ = ["TrainingHistory", "feature_batches", "train_head", "train_model"]

logger = logging.getLogger(__name__)

#: Per-epoch metric lists, e.g. {"loss": [...], "val_loss": [...], "accuracy": [...], ...}.
TrainingHistory = dict[str, list[float]]


def train_model(
    model: keras.Model,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    config: TrainConfig,
    callbacks: list[keras.callbacks.Callback] | None = None,
    train_weights: np.ndarray | None = None,
    val_weights: np.ndarray | None = None,
) -> tuple[TrainingHistory, int]:
    """Train a compiled model with the paper's procedure.

    Training batches are shuffled and augmented each epoch; validation batches are not.
    Training stops after ``config.early_stopping_patience`` epochs without a lower
    validation loss and the weights of the best epoch are restored.

    Args:
        model: compiled model from :func:`aml_model.architecture.build_model`.
        train_images, val_images: `(n, s, s, 3)` uint8 RGB cells.
        train_labels, val_labels: `(n,)` 0/1 labels, 1 = blast.
        config: epochs, batch size, patience, seed and augmentation.
        callbacks: extra Keras callbacks (progress reporting).
        train_weights: `(n,)` loss weights of the training cells (source and label balance).
        val_weights: `(m,)` weights of the validation cells (see :func:`train_head`).

    Returns:
        The per-epoch history and the 0-based index of the restored (best) epoch.
    """
    keras.utils.set_random_seed(config.seed)
    augmenter = build_augmenter(config.augment, seed=config.seed)
    train = make_dataset(train_images, train_labels, batch_size=config.batch_size,
                         augmenter=augmenter, shuffle_seed=config.seed, weights=train_weights)
    val = make_dataset(val_images, val_labels, batch_size=config.batch_size, weights=val_weights)
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss",
        patience=config.early_stopping_patience,
        # Keras restores the best epoch at the end of training, also when no early stop happened.
        restore_best_weights=True,
    )
    fit = model.fit(train, validation_data=val, epochs=config.epochs, shuffle=False,
                    callbacks=[stopper, *(callbacks or [])], verbose=0)
    history = {key: [float(v) for v in values] for key, values in fit.history.items()}
    best_epoch = int(np.argmin(history["val_loss"]))
    logger.info("trained %d epochs; best val_loss %.4f at epoch %d",
                len(history["val_loss"]), history["val_loss"][best_epoch], best_epoch + 1)
    return history, best_epoch


def feature_batches(features, labels: np.ndarray, batch_size: int, weights: np.ndarray | None = None,
                    seed: int | None = None):
    """A tf.data pipeline of cached backbone features, read a batch at a time.

    Only one batch is converted to float32 at a time, so the features may stay float16 (as
    cached) or live in any array that takes a sorted index array (a Zarr array, a memory map).
    The order comes from tf.data's seeded shuffle of row numbers, reshuffled every epoch: the
    same seed gives the same batches whatever the timing of the prefetching.

    Args:
        features: `(n, h, w, c)` array-like.
        labels: `(n,)` 0/1.
        batch_size: rows per batch.
        weights: `(n,)` per-row loss weights, or None.
        seed: shuffle with this seed; None keeps the rows' order.

    Returns:
        A dataset of `(batch, h, w, c)` float32 features, `(batch, 1)` float32 labels and, with
        ``weights``, `(batch,)` float32 weights.
    """
    import tensorflow as tf

    if len(features) != len(labels) or (weights is not None and len(weights) != len(labels)):
        message = (f"{len(features)} feature rows, {len(labels)} labels, "
                   f"{0 if weights is None else len(weights)} weights")
        raise ValueError(message)
    labels = np.asarray(labels, np.float32).reshape(-1, 1)
    weights = None if weights is None else np.asarray(weights, np.float32)
    feature_shape = tuple(features.shape[1:])

    def load(rows: np.ndarray):
        rows = np.sort(rows)
        batch = [np.asarray(features[rows], np.float32), labels[rows]]
        return batch if weights is None else [*batch, weights[rows]]

    def load_tensors(rows):
        types = [tf.float32, tf.float32] + ([] if weights is None else [tf.float32])
        batch = tf.numpy_function(load, [rows], types)
        batch[0].set_shape((None, *feature_shape))
        batch[1].set_shape((None, 1))
        if weights is not None:
            batch[2].set_shape((None,))
        return tuple(batch)

    dataset = tf.data.Dataset.range(len(labels))
    if seed is not None:
        dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).map(load_tensors).prefetch(2)


def train_head(
    head: keras.Model,
    train_features,
    train_labels: np.ndarray,
    val_features,
    val_labels: np.ndarray,
    config: TrainConfig,
    train_weights: np.ndarray | None = None,
    val_weights: np.ndarray | None = None,
) -> tuple[TrainingHistory, int]:
    """Train the classifier head on cached backbone features, with the paper's early stopping.

    Augmentation is already in the features (several augmented views per training cell), so
    batches are only shuffled. Features are read a batch at a time (:func:`feature_batches`):
    memory holds the rows as they are given (float16 from the cache) plus one float32 batch.

    Args:
        head: compiled model from :func:`aml_model.architecture.build_head`.
        train_features, val_features: `(n, h, w, c)` backbone outputs, any float dtype.
        train_labels, val_labels: `(n,)` 0/1.
        config: epochs, batch size, patience and seed.
        train_weights: `(n,)` loss weights of the training rows (source and label balance).
        val_weights: `(m,)` weights of the validation rows, so that early stopping watches the
            loss that training minimises (otherwise the most numerous source decides when to stop).

    Returns:
        The per-epoch history and the 0-based index of the restored (best) epoch.
    """
    keras.utils.set_random_seed(config.seed)
    train = feature_batches(train_features, train_labels, config.batch_size, train_weights, seed=config.seed)
    val = feature_batches(val_features, val_labels, config.batch_size, val_weights)
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.early_stopping_patience,
                                            restore_best_weights=True)
    fit = head.fit(train, validation_data=val, epochs=config.epochs, callbacks=[stopper], verbose=0, shuffle=False)
    history = {key: [float(v) for v in values] for key, values in fit.history.items()}
    return history, int(np.argmin(history["val_loss"]))
