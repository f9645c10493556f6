"""Champion/challenger promotion rule."""

from __future__ import annotations

from dataclasses import dataclass

from aml_model.evaluate import BinaryMetrics

__all__ = ["PromotionDecision", "decide_promotion"]


@dataclass(frozen=True)
class PromotionDecision:
    """Whether the challenger replaces the champion, and why."""

    promote: bool
    reason: str


def decide_promotion(
    comparisons: dict[str, tuple[BinaryMetrics, BinaryMetrics]],
    margin: float = 0.005,
) -> PromotionDecision:
    """Promote only if, on every test set compared, the challenger's ROC AUC is not lower than the
    champion's by more than ``margin`` and its sensitivity is not lower.

    Args:
        comparisons: test-set name -> (challenger metrics, champion metrics) on the same cells;
            empty when there is no champion (the first model is promoted).
        margin: tolerated AUC drop.
    """
    if not comparisons:
        return PromotionDecision(True, "no champion yet: the first model is promoted")
    failures = []
    for name, (challenger, champion) in comparisons.items():
        if challenger.roc_auc < champion.roc_auc - margin:
            failures.append(f"on {name} AUC {challenger.roc_auc:.4f} < champion {champion.roc_auc:.4f} - {margin:g}")
        if challenger.sensitivity < champion.sensitivity:
            failures.append(f"on {name} sensitivity {challenger.sensitivity:.4f} < champion {champion.sensitivity:.4f}")
    if failures:
        return PromotionDecision(False, "kept as a candidate: " + "; ".join(failures))
    return PromotionDecision(True, "no worse than the champion on " + ", ".join(comparisons))
