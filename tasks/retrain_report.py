"""What a retrain records: the model card, and the artifacts that show it in Prefect's UI."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from aml_model.config import ExperimentConfig
from aml_model.evaluate import REVIEW_CELLS, BinaryMetrics
from aml_model.inference import REDUCED_PRECISION_MAX_ABS_DP
from aml_model.promotion import PromotionDecision
from aml_model.sampling import group_counts
from tasks.privacy import prefect_cell_rows
from tasks.registry import CARD_FILE, ModelRef, models_root
from tasks.store import Store, join
from tasks.training import AGREEMENT_CELLS, TrainedModel, TrainingSet

__all__ = [
    "FIGURE_FILES",
    "REVIEW_COLUMNS",
    "model_card",
    "publish_retrain_report",
    "publish_skipped",
]

#: The paper's four figures, as files next to each registered model.
FIGURE_FILES = ("learning_curves.png", "confusion_matrix.png", "roc_curve.png", "f1_curve.png")

#: What the card says of each misclassified test cell to review (with its probability).
REVIEW_COLUMNS = ("cell_id", "source", "cell_type", "label", "source_uri")


def model_card(
    config: ExperimentConfig,
    settings: dict,
    backbone: dict,
    data: TrainingSet,
    sources: list[str],
    runs: list[str],
    split: dict,
    by_patient: bool,
    trained: TrainedModel,
    metrics: BinaryMetrics,
    evaluation: dict[str, pd.DataFrame],
    parent: str | None,
    comparisons: dict[str, tuple[BinaryMetrics, BinaryMetrics]],
    decision: PromotionDecision,
    promotion_margin: float,
    embedded: int,
    started_at: datetime,
) -> dict:
    """The card registered with a model (docs/design.md, "The model registry").

    Args:
        settings: recipe, training_path and augment_views (compared by ``skip_unchanged``).
        backbone: id, weights choice and the stored weights file of the backbone.
        runs: the ingest run roots, one per source.
        split: positions in ``data.cells`` of the train, val and test cells.
        evaluation: the test cells' blast-like rates by source, and by source and cell type, and
            the misclassified test cells to review (``to_review``, the most confident first).
    """
    cells, y = data.cells, data.y
    return {
        "config": config.to_dict(),
        **settings,
        "backbone": backbone,
        "data": {
            "sources": sources,
            "runs": runs,
            "sha256": data.data_hash,
            "n_labelled": len(cells),
            "n_unlabelled": data.n_unlabelled,
            "n_duplicates": data.n_duplicates,
            "per_source": group_counts(cells["source"].to_numpy(), y),
            "train_per_source": group_counts(
                cells["source"].to_numpy()[split["train"]], y[split["train"]]
            ),
        },
        "split": {
            "seed": config.train.seed,
            "by": "patient" if by_patient else "cell",
            "sizes": {k: len(v) for k, v in split.items()},
            "patients": {k: sorted(set(cells["patient_id"].iloc[v])) for k, v in split.items()}
            if by_patient
            else None,
        },
        "metrics": metrics.to_dict(),
        "history": trained.history,
        "best_epoch": trained.best_epoch,
        "parent": parent,
        "training_attempts": trained.attempts,
        "evaluation": {name: frame.to_dict("records") for name, frame in evaluation.items()},
        "promotion": {
            "promoted": decision.promote,
            "reason": decision.reason,
            "margin": promotion_margin,
            "comparisons": {
                name: {"challenger": a.to_dict(), "champion": b.to_dict()}
                for name, (a, b) in comparisons.items()
            },
        },
        "inference": {
            "max_abs_dp_vs_float32": trained.precision_agreement,
            "guard": REDUCED_PRECISION_MAX_ABS_DP,
            # Test cells first, then validation and training cells (tasks.training.agreement_cells).
            "cells": min(
                sum(len(split[name]) for name in ("test", "val", "train")), AGREEMENT_CELLS
            ),
        },
        "embedded": embedded,
        "started_at": started_at.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
    }


def publish_retrain_report(ref: ModelRef, card: dict, store: Store) -> None:
    """The ``retrain-metrics``, ``retrain-rates-by-type``, ``retrain-cells-to-review`` (when a test cell is
    misclassified) and ``retrain-report`` artifacts of a registered model."""
    metrics, promotion = card["metrics"], card["promotion"]
    rows = [{"model": "challenger", "test set": "own", **metrics}]
    rows += [
        {"model": who, "test set": name, **pair[who]}
        for name, pair in promotion["comparisons"].items()
        for who in ("challenger", "champion")
    ]
    create_table_artifact(
        key="retrain-metrics", table=rows, description=f"test metrics of {ref.version}"
    )
    create_table_artifact(
        key="retrain-rates-by-type",
        table=card["evaluation"]["by_source_and_type"],
        description=f"{ref.version}: blast-like rate of the test cells per source and cell type",
    )
    to_review = card["evaluation"]["to_review"]
    if to_review:
        create_table_artifact(
            key="retrain-cells-to-review",
            table=prefect_cell_rows(to_review),
            description=f"{ref.version}: misclassified test cells, the most confident first "
            "(a wrong label or a wrong model: look at them)",
        )
    folder = join(models_root(store), ref.version)
    verdict = "Promoted to champion" if promotion["promoted"] else "Kept as a candidate"
    create_markdown_artifact(
        key="retrain-report",
        markdown="\n".join(
            [
                f"# Model {ref.version}",
                "",
                f"**{verdict}**: {promotion['reason']}",
                "",
                f"Test ROC AUC {metrics['roc_auc']:.3f}, accuracy {metrics['accuracy']:.3f}, sensitivity "
                f"{metrics['sensitivity']:.3f}, specificity {metrics['specificity']:.3f}, F1 {metrics['f1']:.3f}.",
                "",
                f"{len(to_review)} misclassified test cells to review "
                f"(at most {REVIEW_CELLS}, the most confident first)"
                + (": artifact `retrain-cells-to-review`." if to_review else "."),
                "",
                *[f"- `{join(folder, name)}`" for name in (*FIGURE_FILES, CARD_FILE)],
            ]
        ),
        description=f"retrain report {ref.version}",
    )


def publish_skipped(champion: str, reason: str) -> None:
    """The ``retrain-report`` artifact of a run that trained nothing."""
    create_markdown_artifact(
        key="retrain-report",
        markdown=f"# Training skipped\n\n{reason}.\n\n"
        f"Champion {champion} stays; nothing was registered.",
        description=f"retrain skipped: champion {champion} unchanged",
    )
