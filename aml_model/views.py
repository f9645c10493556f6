"""Augmented views of a cell that depend only on what names them.

The feature cache keeps, per cell, the cell as it is (view 0) and augmented views 1..k. A view
is named by the cell's sha256, the view number and :func:`augmentation_key` (the augmentation
settings and the training seed); its random draws come from :func:`view_seed` of that name,
never from its position in a batch or a cache, so a view computed today, in another order or
on another worker, is the same view (docs/design.md, "Training and evaluation").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np

from aml_model.config import AugmentConfig

__all__ = ["ViewAugmenter", "augmentation_key", "view_seed"]


def augmentation_key(augment: AugmentConfig, seed: int, view: int) -> str:
    """What, besides the cell, a view's pixels depend on: "" for view 0 (the cell as it is),
    else a digest of the augmentation settings and the seed."""
    if view == 0:
        return ""
    settings = json.dumps(
        {"augment": dataclasses.asdict(augment), "seed": int(seed)}, sort_keys=True
    )
    return hashlib.sha256(settings.encode()).hexdigest()[:16]


def view_seed(sha256: str, view: int, key: str) -> int:
    """The seed of one view's random draws, derived from its name (below 2**31)."""
    digest = hashlib.sha256(f"{sha256}/{int(view)}/{key}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class ViewAugmenter:
    """The training augmentation applied to one image at a time with a seed of its own.

    Keras' random layers draw for a whole batch from their seed generators' state, so the same
    image would be augmented differently in another batch. Here the state of every generator is
    set to ``(seed, 0)`` before each image: the result equals that of
    :func:`aml_model.augment.build_augmenter` built with that seed and called on the image alone.
    """

    def __init__(self, augment: AugmentConfig) -> None:
        import tensorflow as tf

        from aml_model.augment import build_augmenter

        self.model = build_augmenter(augment, seed=0)
        self._states = [v for v in self.model.variables if v.name == "seed_generator_state"]
        # One compiled graph for every call: eager and graph execution round differently.
        self._apply = tf.function(
            lambda image: self.model(image, training=True), reduce_retracing=True
        )

    def __call__(self, image: np.ndarray, seed: int) -> np.ndarray:
        """One `(s, s, 3)` float image in 0..255, augmented with ``seed``."""
        for state in self._states:
            state.assign(np.array([seed, 0], np.int64))
        return np.asarray(self._apply(np.asarray(image, np.float32)[None]))[0]
