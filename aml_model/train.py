"""Fit the paper's model: augmentation, early stopping on validation loss, best weights restored."""

from __future__ import annotations

import logging

import keras
import numpy as np

from aml_model.augment import build_augmenter
from aml_model.config import TrainConfig
from aml_model.data import make_dataset

__all__ = ["TrainingHistory", "train_head", "train_model"]

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

    Returns:
        The per-epoch history and the 0-based index of the restored (best) epoch.
    """
    keras.utils.set_random_seed(config.seed)
    augmenter = build_augmenter(config.augment, seed=config.seed)
    train = make_dataset(train_images, train_labels, batch_size=config.batch_size,
                         augmenter=augmenter, shuffle_seed=config.seed)
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


def train_head(
    head: keras.Model,
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    config: TrainConfig,
) -> tuple[TrainingHistory, int]:
    """Train the classifier head on cached backbone features, with the paper's early stopping.

    Augmentation is already in the features (several augmented views per training cell), so
    batches are only shuffled.

    Args:
        head: compiled model from :func:`aml_model.architecture.build_head`.
        train_features, val_features: `(n, h, w, c)` backbone outputs, float.
        train_labels, val_labels: `(n,)` 0/1.
        config: epochs, batch size, patience and seed.

    Returns:
        The per-epoch history and the 0-based index of the restored (best) epoch.
    """
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)
    train = (tf.data.Dataset.from_tensor_slices((train_features, np.asarray(train_labels, np.float32).reshape(-1, 1)))
             .shuffle(len(train_features), seed=config.seed).batch(config.batch_size).prefetch(tf.data.AUTOTUNE))
    val = tf.data.Dataset.from_tensor_slices(
        (val_features, np.asarray(val_labels, np.float32).reshape(-1, 1))).batch(config.batch_size)
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.early_stopping_patience,
                                            restore_best_weights=True)
    fit = head.fit(train, validation_data=val, epochs=config.epochs, callbacks=[stopper], verbose=0, shuffle=False)
    history = {key: [float(v) for v in values] for key, values in fit.history.items()}
    return history, int(np.argmin(history["val_loss"]))
