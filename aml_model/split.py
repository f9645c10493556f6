"""Seeded train/validation/test splits, by patient when patient ids exist."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import GroupShuffleSplit, train_test_split

__all__ = ["split_indices"]


def _stratify_or_none(labels: np.ndarray) -> np.ndarray | None:
    # Stratifying needs at least two cells of each of two classes.
    counts = np.unique(labels, return_counts=True)[1]
    return labels if counts.size >= 2 and counts.min() >= 2 else None


def split_indices(
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Split cells into train, validation and test index sets.

    With ``groups`` (patient ids) no group appears in two splits; without them the split
    is by cell and stratified by label.

    Args:
        labels: `(n,)` 0/1 labels.
        groups: `(n,)` patient ids, or None.
        fractions: train, validation and test fractions, summing to 1.
        seed: random seed.

    Returns:
        {"train": idx, "val": idx, "test": idx}, sorted int arrays covering 0..n-1 once.
    """
    labels = np.asarray(labels)
    n = labels.size
    index = np.arange(n)
    _, val_fraction, test_fraction = fractions
    holdout = val_fraction + test_fraction
    if groups is None:
        train, rest = train_test_split(index, test_size=holdout, random_state=seed,
                                       stratify=_stratify_or_none(labels))
        val, test = train_test_split(rest, test_size=test_fraction / holdout, random_state=seed,
                                     stratify=_stratify_or_none(labels[rest]))
    else:
        groups = np.asarray(groups)
        outer = GroupShuffleSplit(n_splits=1, test_size=holdout, random_state=seed)
        train, rest = next(outer.split(index, labels, groups))
        inner = GroupShuffleSplit(n_splits=1, test_size=test_fraction / holdout, random_state=seed)
        val_pos, test_pos = next(inner.split(rest, labels[rest], groups[rest]))
        val, test = rest[val_pos], rest[test_pos]
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}
