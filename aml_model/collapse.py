"""Detect a classifier that has collapsed to (nearly) one answer for every cell.

Offline the backbone is random, and the paper's head on random features can fall to a constant
predictor depending on its initialisation (a test ROC AUC of 0.500 was seen). Such a model must
never be registered, so training checks its validation predictions and re-initialises.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

from aml_model.errors import TrainingCollapsedError

__all__ = [
    "MAX_ATTEMPTS",
    "CollapseCheck",
    "attempt_seed",
    "check_collapse",
    "require_not_collapsed",
]

#: A validation ROC AUC at or below this is no better than a guess for this task.
MIN_VAL_AUC = 0.6
#: Probabilities spread less than this (standard deviation) are one answer for every cell.
MIN_SPREAD = 1e-3
#: Initialisations tried before training is declared collapsed.
MAX_ATTEMPTS = 3


def attempt_seed(seed: int, attempt: int) -> int:
    """The seed of initialisation ``attempt`` (0 = the run's own): depends on nothing but ``seed``."""
    return (seed + 7919 * attempt) % 2**32  # numpy and TensorFlow take seeds below 2**32


@dataclass(frozen=True)
class CollapseCheck:
    """The validation figures a collapse is judged by.

    Attributes:
        val_auc: ROC AUC on the validation cells (NaN when they hold one class).
        spread: standard deviation of the validation probabilities.
        predicted_blast_fraction: share of validation cells at or above the threshold.
        reason: why the model counts as collapsed, or None.
    """

    val_auc: float
    spread: float
    predicted_blast_fraction: float
    reason: str | None

    @property
    def collapsed(self) -> bool:
        return self.reason is not None


def check_collapse(
    y_val: np.ndarray,
    p_val: np.ndarray,
    threshold: float = 0.5,
    min_auc: float = MIN_VAL_AUC,
    min_spread: float = MIN_SPREAD,
) -> CollapseCheck:
    """Judge validation predictions.

    Args:
        y_val: `(n,)` 0/1 labels of the validation cells (both classes present).
        p_val: `(n,)` blast probabilities.
        threshold: the decision threshold.
        min_auc, min_spread: the limits below which the model is collapsed.

    Returns:
        The figures, with a reason when the model's probabilities barely vary or it ranks the
        cells no better than ``min_auc``. A model that ranks well but puts every validation cell
        on one side of the threshold is miscalibrated, not collapsed (a short training, or a site
        whose scores run high): its share of predicted blasts is recorded, not refused.
    """
    y_val, p_val = np.asarray(y_val).astype(int).ravel(), np.asarray(p_val, np.float64).ravel()
    auc = float(roc_auc_score(y_val, p_val)) if len(np.unique(y_val)) == 2 else float("nan")
    spread = float(np.std(p_val)) if p_val.size else 0.0
    blast_fraction = float(np.mean(p_val >= threshold)) if p_val.size else 0.0
    reason = None
    if spread < min_spread:
        reason = f"validation probabilities hardly vary (standard deviation {spread:.2g} < {min_spread:g})"
    elif not auc > min_auc:
        reason = f"validation ROC AUC {auc:.3f} is not above {min_auc:g}"
    return CollapseCheck(auc, spread, blast_fraction, reason)


def require_not_collapsed(checks: list[CollapseCheck]) -> CollapseCheck:
    """The last check, or :class:`TrainingCollapsedError` naming every attempt when it collapsed."""
    last = checks[-1]
    if last.collapsed:
        attempts = "; ".join(f"attempt {i + 1}: {c.reason}" for i, c in enumerate(checks))
        message = (
            f"training collapsed to a constant predictor in all {len(checks)} initialisations "
            f"({attempts}); no model was registered. Check the labels, or try another seed or recipe"
        )
        raise TrainingCollapsedError(message)
    return last
