"""Fit the paper's model: augmentation, early stopping on validation loss, best weights restored."""

from __future__ import annotations

import logging

import keras
import numpy as np

from aml_model.augment import build_augmenter
from aml_model.config import TrainConfig
from aml_model.data import make_dataset

__all__ = ["FeatureBatches", "TrainingHistory", "train_head", "train_model"]

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

    Returns:
        The per-epoch history and the 0-based index of the restored (best) epoch.
    """
    keras.utils.set_random_seed(config.seed)
    augmenter = build_augmenter(config.augment, seed=config.seed)
    train = make_dataset(train_images, train_labels, batch_size=config.batch_size,
                         augmenter=augmenter, shuffle_seed=config.seed, weights=train_weights)
    val = make_dataset(val_images, val_labels, batch_size=config.batch_size)
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


class FeatureBatches(keras.utils.PyDataset):
    """Batches of cached backbone features, read row by row as training asks for them.

    Only one batch is converted to float32 at a time, so the features may stay float16 (as
    cached) or live in any array that takes an index array (a Zarr array, a memory map).

    Args:
        features: `(n, h, w, c)` array-like indexable by a sorted int array.
        labels: `(n,)` 0/1.
        batch_size: rows per batch.
        weights: `(n,)` per-row loss weights, or None.
        seed: reshuffle the rows every epoch with this seed; None keeps their order.
    """

    def __init__(self, features, labels: np.ndarray, batch_size: int, weights: np.ndarray | None = None,
                 seed: int | None = None) -> None:
        super().__init__()
        if len(features) != len(labels) or (weights is not None and len(weights) != len(labels)):
            message = f"{len(features)} feature rows, {len(labels)} labels, {0 if weights is None else len(weights)} weights"
            raise ValueError(message)
        self.features, self.batch_size = features, batch_size
        self.labels = np.asarray(labels, np.float32).reshape(-1, 1)
        self.weights = None if weights is None else np.asarray(weights, np.float32)
        self._rng = None if seed is None else np.random.default_rng(seed)
        self._order = np.arange(len(self.labels))
        self.on_epoch_end()

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __getitem__(self, index: int):
        rows = np.sort(self._order[index * self.batch_size:(index + 1) * self.batch_size])
        batch = (np.asarray(self.features[rows], np.float32), self.labels[rows])
        return batch if self.weights is None else (*batch, self.weights[rows])

    def on_epoch_end(self) -> None:
        if self._rng is not None:
            self._rng.shuffle(self._order)


def train_head(
    head: keras.Model,
    train_features,
    train_labels: np.ndarray,
    val_features,
    val_labels: np.ndarray,
    config: TrainConfig,
    train_weights: np.ndarray | None = None,
) -> tuple[TrainingHistory, int]:
    """Train the classifier head on cached backbone features, with the paper's early stopping.

    Augmentation is already in the features (several augmented views per training cell), so
    batches are only shuffled. Features are read a batch at a time (:class:`FeatureBatches`):
    memory holds the rows as they are given (float16 from the cache) plus one float32 batch.

    Args:
        head: compiled model from :func:`aml_model.architecture.build_head`.
        train_features, val_features: `(n, h, w, c)` backbone outputs, any float dtype.
        train_labels, val_labels: `(n,)` 0/1.
        config: epochs, batch size, patience and seed.
        train_weights: `(n,)` loss weights of the training rows (source and label balance).

    Returns:
        The per-epoch history and the 0-based index of the restored (best) epoch.
    """
    keras.utils.set_random_seed(config.seed)
    train = FeatureBatches(train_features, train_labels, config.batch_size, train_weights, seed=config.seed)
    val = FeatureBatches(val_features, val_labels, config.batch_size)
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.early_stopping_patience,
                                            restore_best_weights=True)
    fit = head.fit(train, validation_data=val, epochs=config.epochs, callbacks=[stopper], verbose=0)
    history = {key: [float(v) for v in values] for key, values in fit.history.items()}
    return history, int(np.argmin(history["val_loss"]))
