"""Champion/challenger promotion rule."""

from __future__ import annotations

import json
from dataclasses import dataclass

from aml_model.config import RetrainConfig
from aml_model.evaluate import BinaryMetrics

__all__ = ["PromotionDecision", "decide_promotion", "unchanged_since_champion"]


@dataclass(frozen=True)
class PromotionDecision:
    """Whether the challenger replaces the champion, and why."""

    promote: bool
    reason: str


def decide_promotion(
    comparisons: dict[str, tuple[BinaryMetrics, BinaryMetrics]],
    margin: float = RetrainConfig.promotion_margin,
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
            failures.append(
                f"on {name} AUC {challenger.roc_auc:.4f} < champion {champion.roc_auc:.4f} - {margin:g}"
            )
        if challenger.sensitivity < champion.sensitivity:
            failures.append(
                f"on {name} sensitivity {challenger.sensitivity:.4f} < champion {champion.sensitivity:.4f}"
            )
    if failures:
        return PromotionDecision(False, "kept as a candidate: " + "; ".join(failures))
    return PromotionDecision(True, "no worse than the champion on " + ", ".join(comparisons))


def unchanged_since_champion(
    card: dict | None, data_hash: str, code_version: dict, settings: dict
) -> str | None:
    """Why training again would reproduce the champion, or None when something changed (or is unknown).

    Training is skipped only when all three are known and equal to the champion's card:

    - the labelled data: ``data_hash`` against ``card["data"]["sha256"]`` (image hashes with labels);
    - the code: the same git commit, and neither checkout dirty (uncommitted changes, or no git
      commit at all, cannot be compared: such code always trains);
    - the configuration: every key of ``settings`` (``config``, ``recipe``, ``training_path``,
      ``augment_views`` as the card records them) equal to the card's, compared as JSON.

    Args:
        card: the champion's model card, None when there is no champion.
        data_hash: the fingerprint of the labelled cells this run would train on.
        code_version: this code's ``tasks.registry.code_version()``.
        settings: this run's training settings, keyed as in the card.
    """
    if not card:
        return None
    recorded = card.get("code_version")
    if (
        not isinstance(recorded, dict)
        or not recorded.get("commit")
        or not code_version.get("commit")
    ):
        return None
    if recorded.get("dirty") is not False or code_version.get("dirty") is not False:
        return None
    if (
        recorded["commit"] != code_version["commit"]
        or (card.get("data") or {}).get("sha256") != data_hash
    ):
        return None
    if any(
        json.dumps(card.get(key), sort_keys=True) != json.dumps(value, sort_keys=True)
        for key, value in settings.items()
    ):
        return None
    return (
        f"nothing changed since champion {card.get('version')}: the same labelled data "
        f"(sha256 {data_hash[:12]}), code (commit {code_version['commit'][:12]}) and configuration"
    )
