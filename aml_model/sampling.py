"""Training weights that balance the cells of several sources and both labels."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["balanced_weights", "group_counts"]


def balanced_weights(sources: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-cell loss weights: each label carries half the total weight, shared equally by the
    sources that hold cells of that label, and equally by the cells of each (source, label).

    With one lab's blasts and two labs' normal cells, the blasts weigh as much as all normal
    cells together and each lab's normal cells as much as the other's, so a lab with more cells
    cannot make its look the signature of a class.

    Args:
        sources: `(n,)` source names (any hashable values).
        labels: `(n,)` 0/1 labels.

    Returns:
        `(n,)` float32 weights with mean 1.
    """
    frame = pd.DataFrame({"source": np.asarray(sources), "label": np.asarray(labels).astype(int)})
    if frame.empty:
        return np.zeros(0, np.float32)
    group_size = frame.groupby(["source", "label"])["label"].transform("size").to_numpy(float)
    sources_per_label = frame.groupby("label")["source"].transform("nunique").to_numpy(float)
    n_labels = frame["label"].nunique()
    weights = 1.0 / (n_labels * sources_per_label * group_size)
    return (weights * len(frame) / weights.sum()).astype(np.float32)


def group_counts(sources: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, int]]:
    """{source: {"blast": n, "normal": n}} (for model cards)."""
    frame = pd.DataFrame({"source": np.asarray(sources), "label": np.asarray(labels).astype(int)})
    counts: dict[str, dict[str, int]] = {}
    for (source, label), n in frame.value_counts(["source", "label"]).sort_index().items():
        counts.setdefault(str(source), {"blast": 0, "normal": 0})[
            "blast" if label == 1 else "normal"
        ] = int(n)
    return counts
