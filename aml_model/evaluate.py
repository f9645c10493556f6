"""Test-set metrics of a binary blast classifier (scikit-learn)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn import metrics as skm

__all__ = [
    "REVIEW_CELLS",
    "BinaryMetrics",
    "compute_metrics",
    "confident_errors",
    "f1_by_threshold",
    "rates_by_group",
]

#: Misclassified test cells a retrain lists for a person to look at, worst first.
REVIEW_CELLS = 10


@dataclass(frozen=True)
class BinaryMetrics:
    """Metrics at one threshold; positive class = blast.

    Attributes:
        n: number of cells.
        threshold: probability at or above which a cell counts as blast.
        accuracy, sensitivity (recall of blasts), specificity (recall of normal cells),
        precision, f1: fractions in [0, 1].
        roc_auc: area under the ROC curve, or NaN when only one class is present.
        tn, fp, fn, tp: confusion-matrix counts.
    """

    n: int
    threshold: float
    accuracy: float
    sensitivity: float
    specificity: float
    precision: float
    f1: float
    roc_auc: float
    tn: int
    fp: int
    fn: int
    tp: int

    def to_dict(self) -> dict[str, float | int]:
        """Plain dictionary (JSON-ready)."""
        return dataclasses.asdict(self)

    @property
    def confusion_matrix(self) -> np.ndarray:
        """`(2, 2)` int array, rows = true (normal, blast), columns = predicted."""
        return np.array([[self.tn, self.fp], [self.fn, self.tp]])


def _validate(y_true: np.ndarray, y_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).astype(int).ravel()
    y_prob = np.asarray(y_prob, dtype=np.float64).ravel()
    if y_true.shape != y_prob.shape:
        message = f"{y_true.size} labels but {y_prob.size} probabilities"
        raise ValueError(message)
    if y_true.size == 0:
        raise ValueError("no cells to evaluate")
    if not set(np.unique(y_true)) <= {0, 1}:
        raise ValueError(f"labels must be 0 or 1, found {sorted(set(np.unique(y_true)))}")
    return y_true, y_prob


def compute_metrics(
    y_true: np.ndarray, y_prob: np.ndarray, threshold: float = 0.5
) -> BinaryMetrics:
    """Accuracy, sensitivity, specificity, precision, F1, ROC AUC and the confusion matrix.

    Args:
        y_true: `(n,)` 0/1 labels, 1 = blast.
        y_prob: `(n,)` blast probabilities in [0, 1].
        threshold: a cell with probability >= threshold is predicted blast.

    Returns:
        The metrics; undefined ratios (no positives, say) are 0, AUC is NaN with one class.
    """
    y_true, y_prob = _validate(y_true, y_prob)
    y_pred = (y_prob >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    auc = skm.roc_auc_score(y_true, y_prob) if len(np.unique(y_true)) == 2 else float("nan")
    return BinaryMetrics(
        n=int(y_true.size),
        threshold=float(threshold),
        accuracy=float(skm.accuracy_score(y_true, y_pred)),
        sensitivity=float(skm.recall_score(y_true, y_pred, pos_label=1, zero_division=0)),
        specificity=float(skm.recall_score(y_true, y_pred, pos_label=0, zero_division=0)),
        precision=float(skm.precision_score(y_true, y_pred, zero_division=0)),
        f1=float(skm.f1_score(y_true, y_pred, zero_division=0)),
        roc_auc=float(auc),
        tn=int(tn),
        fp=int(fp),
        fn=int(fn),
        tp=int(tp),
    )


def f1_by_threshold(
    y_true: np.ndarray, y_prob: np.ndarray, thresholds: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """F1 score as a function of the decision threshold (the paper's F1 curve).

    Args:
        y_true: `(n,)` 0/1 labels.
        y_prob: `(n,)` probabilities.
        thresholds: `(k,)` thresholds; 101 evenly spaced in [0, 1] when omitted.

    Returns:
        `(thresholds, f1)`, both `(k,)` float arrays.
    """
    y_true, y_prob = _validate(y_true, y_prob)
    thresholds = np.linspace(0.0, 1.0, 101) if thresholds is None else np.asarray(thresholds, float)
    scores = np.array(
        [skm.f1_score(y_true, (y_prob >= t).astype(int), zero_division=0) for t in thresholds]
    )
    return thresholds, scores


def rates_by_group(
    cells: pd.DataFrame, probabilities: np.ndarray, threshold: float, by: list[str]
) -> pd.DataFrame:
    """Blast-like rate (and ROC AUC where both classes are present) per group of cells.

    Args:
        cells: one row per cell with the ``by`` columns and, optionally, ``label``
            ("blast"/"normal"/missing).
        probabilities: `(n,)` blast probabilities in the rows' order.
        threshold: a cell with probability >= threshold is blast-like.
        by: grouping columns, e.g. ``["source", "cell_type"]``; missing values form their own
            group, shown as "unknown".

    Returns:
        One row per group: the ``by`` columns, ``n`` cells, ``n_blast`` labelled blasts,
        ``blast_like`` count, ``blast_like_rate`` in [0, 1] and ``roc_auc`` (NaN unless the group
        holds labelled blasts and labelled normal cells).
    """
    probabilities = np.asarray(probabilities, np.float64).ravel()
    if len(cells) != len(probabilities):
        message = f"{len(cells)} cells but {len(probabilities)} probabilities"
        raise ValueError(message)
    labels = (
        cells["label"] if "label" in cells else pd.Series([None] * len(cells), index=cells.index)
    )
    frame = (
        cells[by]
        .astype(object)
        .where(cells[by].notna(), "unknown")
        .assign(
            _p=probabilities,
            _blast=(labels == "blast").to_numpy(),
            _labelled=labels.notna().to_numpy(),
        )
    )
    rows = []
    for key, group in frame.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        labelled = group[group["_labelled"]]
        both = labelled["_blast"].nunique() == 2
        rows.append(
            {
                **dict(zip(by, key, strict=True)),
                "n": len(group),
                "n_blast": int(group["_blast"].sum()),
                "blast_like": int((group["_p"] >= threshold).sum()),
                "blast_like_rate": float((group["_p"] >= threshold).mean()),
                "roc_auc": float(skm.roc_auc_score(labelled["_blast"], labelled["_p"]))
                if both
                else float("nan"),
            }
        )
    return pd.DataFrame(
        rows, columns=[*by, "n", "n_blast", "blast_like", "blast_like_rate", "roc_auc"]
    )


def confident_errors(
    cells: pd.DataFrame, probabilities: np.ndarray, threshold: float, n: int = REVIEW_CELLS
) -> pd.DataFrame:
    """The labelled cells on the wrong side of ``threshold``, the most confident first.

    On a small test set one confidently wrong cell moves the ROC AUC by up to 1 / (number of
    cells of the other class), and such a cell is as often a wrong label as a wrong model, so
    they are named for a person to look at.

    Args:
        cells: one row per cell with a ``label`` column ("blast"/"normal"/missing); unlabelled
            cells are never errors.
        probabilities: `(n,)` blast probabilities in the rows' order.
        threshold: a cell with probability >= threshold is blast-like.
        n: at most this many cells.

    Returns:
        Up to ``n`` rows of ``cells`` with a ``probability`` column, ordered by distance of the
        probability from the label (1 for "blast", 0 for "normal"), largest first.
    """
    probabilities = np.asarray(probabilities, np.float64).ravel()
    if len(cells) != len(probabilities):
        message = f"{len(cells)} cells but {len(probabilities)} probabilities"
        raise ValueError(message)
    labels = cells["label"].to_numpy()
    blast, normal = labels == "blast", labels == "normal"
    wrong = (blast & (probabilities < threshold)) | (normal & (probabilities >= threshold))
    miss = np.where(blast, 1 - probabilities, probabilities)
    order = [i for i in np.argsort(-miss, kind="stable") if wrong[i]][:n]
    return cells.iloc[order].assign(probability=probabilities[order])
