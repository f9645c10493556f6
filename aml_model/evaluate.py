"""Test-set metrics of a binary blast classifier (scikit-learn)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from sklearn import metrics as skm

__all__ = ["BinaryMetrics", "compute_metrics", "f1_by_threshold"]


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


def compute_metrics(y_true: np.ndarray, y_prob: np.ndarray, threshold: float = 0.5) -> BinaryMetrics:
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
        tn=int(tn), fp=int(fp), fn=int(fn), tp=int(tp),
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
