"""Seeded train/validation/test splits, by patient when patient ids exist."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

__all__ = ["split_indices", "training_split"]


def _stratify_or_none(labels: np.ndarray) -> np.ndarray | None:
    # Stratifying needs at least two cells of each of two classes.
    counts = np.unique(labels, return_counts=True)[1]
    return labels if counts.size >= 2 and counts.min() >= 2 else None


def _strata_or_labels(strata: np.ndarray, labels: np.ndarray, holdout: float) -> np.ndarray:
    # Each stratum needs a few cells in every split; a smaller one joins its label's stratum.
    smallest = int(np.ceil(2 / holdout)) * 2
    values, counts = np.unique(strata, return_counts=True)
    small = set(values[counts < smallest])
    return np.array(
        [
            f"label:{label}" if stratum in small else str(stratum)
            for stratum, label in zip(strata, labels, strict=True)
        ]
    )


def split_indices(
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    strata: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Split cells into train, validation and test index sets.

    With ``groups`` (patient ids) no group appears in two splits, and the label balance is
    kept as far as whole groups allow (stratified group folds); without them the split is by
    cell and stratified by label.

    Args:
        labels: `(n,)` 0/1 labels.
        groups: `(n,)` patient ids, or None.
        fractions: train, validation and test fractions, summing to 1.
        seed: random seed.
        strata: `(n,)` finer classes to stratify a split by cell on (source, cell type and
            label, say); strata too small to split fall back to the labels.

    Returns:
        {"train": idx, "val": idx, "test": idx}, sorted int arrays covering 0..n-1 once.
    """
    labels = np.asarray(labels)
    n = labels.size
    index = np.arange(n)
    _, val_fraction, test_fraction = fractions
    holdout = val_fraction + test_fraction
    if groups is not None and np.unique(groups).size < round(1 / test_fraction):
        message = (
            f"a split by patient needs at least {round(1 / test_fraction)} patients, found "
            f"{np.unique(groups).size}; split by cell instead (groups=None)"
        )
        raise ValueError(message)
    if groups is None:
        classes = (
            labels if strata is None else _strata_or_labels(np.asarray(strata), labels, holdout)
        )
        train, rest = train_test_split(
            index, test_size=holdout, random_state=seed, stratify=_stratify_or_none(classes)
        )
        val, test = train_test_split(
            rest,
            test_size=test_fraction / holdout,
            random_state=seed,
            stratify=_stratify_or_none(classes[rest]),
        )
    else:
        groups = np.asarray(groups)
        # A test fold of 1/k of the groups, then a validation fold of the rest.
        outer = StratifiedGroupKFold(
            n_splits=max(2, round(1 / test_fraction)), shuffle=True, random_state=seed
        )
        rest, test = next(outer.split(index, labels, groups))
        inner = StratifiedGroupKFold(
            n_splits=max(2, round((1 - test_fraction) / val_fraction)),
            shuffle=True,
            random_state=seed,
        )
        train_pos, val_pos = next(inner.split(rest, labels[rest], groups[rest]))
        train, val = rest[train_pos], rest[val_pos]
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def training_split(
    cells: pd.DataFrame,
    labels: np.ndarray,
    fractions: tuple[float, float, float],
    seed: int,
    patients_known: bool,
) -> tuple[dict[str, np.ndarray], bool]:
    """The split of a retrain: by patient where the cells' patients are real and numerous enough,
    otherwise by cell, keeping each source, cell type and label's share in every split.

    Args:
        cells: the labelled cells: patient_id, source, cell_type (None where unknown), label.
        labels: `(n,)` 0/1.
        fractions: train, validation and test fractions.
        patients_known: the layouts name patients (a class layout's patient is its folder).

    Returns:
        ({"train", "val", "test"}: sorted positions in ``cells``; True when split by patient).
    """
    by_patient = patients_known and cells["patient_id"].nunique() >= round(1 / fractions[2])
    strata = (
        cells["source"] + "/" + cells["cell_type"].fillna("") + "/" + cells["label"]
    ).to_numpy()
    split = split_indices(
        labels,
        cells["patient_id"].to_numpy() if by_patient else None,
        fractions,
        seed,
        strata=None if by_patient else strata,
    )
    return split, by_patient
