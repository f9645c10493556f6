"""tf.data pipelines from in-memory cell stacks."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from aml_model.preprocess import normalise_for_resnet50

__all__ = ["make_dataset"]


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    batch_size: int = 32,
    augmenter=None,
    shuffle_seed: int | None = None,
    weights: np.ndarray | None = None,
) -> tf.data.Dataset:
    """Batch, optionally shuffle and augment, then normalise cells for ResNet50.

    Args:
        images: `(n, s, s, 3)` uint8 RGB cells.
        labels: `(n,)` 0/1 labels (1 = blast), or None for inference.
        batch_size: cells per batch.
        augmenter: a Keras model applied with ``training=True`` to each batch (0..255 floats)
            before normalisation; None for no augmentation.
        shuffle_seed: shuffle the cells each epoch with this seed; None keeps the order.
        weights: `(n,)` per-cell loss weights (with ``labels`` only), or None.

    Returns:
        A dataset of `(batch, s, s, 3)` float32 batches, paired with `(batch, 1)` float32
        labels when ``labels`` is given (and `(batch,)` weights when ``weights`` is).
    """
    if labels is not None and len(labels) != len(images):
        message = f"{len(images)} images but {len(labels)} labels"
        raise ValueError(message)
    tensors = images if labels is None else (images, np.asarray(labels, np.float32).reshape(-1, 1))
    if weights is not None:
        if labels is None or len(weights) != len(images):
            message = f"weights need labels and one weight per image ({len(images)} images, {len(weights)} weights)"
            raise ValueError(message)
        tensors = (*tensors, np.asarray(weights, np.float32))
    dataset = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)

    def prepare(x):
        x = tf.cast(x, tf.float32)
        if augmenter is not None:
            x = augmenter(x, training=True)
        return normalise_for_resnet50(x)

    if labels is None:
        dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    elif weights is not None:
        dataset = dataset.map(
            lambda x, y, w: (prepare(x), y, w), num_parallel_calls=tf.data.AUTOTUNE
        )
    else:
        dataset = dataset.map(lambda x, y: (prepare(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)
