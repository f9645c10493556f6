"""The ``retrain-and-evaluate`` flow: ingest -> split -> embed -> train -> evaluate -> register -> promote."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import Field

from aml_model.config import DEFAULT_RECIPE, ExperimentConfig, ModelConfig, TrainConfig
from aml_model.evaluate import compute_metrics, rates_by_group
from aml_model.promotion import decide_promotion, unchanged_since_champion
from aml_model.sampling import balanced_weights, group_counts
from aml_model.split import split_indices
from flows.ingest import ingest
from flows.parameters import (BackboneWeights, ImageSize, Layout, Positive, Recipe, Sha256, TrainingPath,
                              require_existing)
from tasks import storage
from tasks.events import emit_model_promoted
from tasks.features import FeatureCache, embed_missing, prepare_backbone
from tasks.registry import champion_card, code_version, set_champion
from tasks.training import (champion_comparisons, evaluation_files, load_training_set, register_challenger,
                            train_on_features, train_plain)

__all__ = ["retrain_and_evaluate"]


def _skipped(champion: str, reason: str, recipe: str, seconds: float) -> dict:
    """The result of a run that trained nothing, its reason logged and in the ``retrain-report`` artifact."""
    get_run_logger().info("training skipped: %s", reason)
    create_markdown_artifact(key="retrain-report", markdown=f"# Training skipped\n\n{reason}.\n\n"
                             f"Champion {champion} stays; nothing was registered.",
                             description=f"retrain skipped: champion {champion} unchanged")
    return {"skipped": True, "version": champion, "model": None, "promoted": False, "reason": reason,
            "recipe": recipe, "seconds": seconds}


@flow(name="retrain-and-evaluate", validate_parameters=True)
def retrain_and_evaluate(
    sources: Annotated[list[str], Field(min_length=1)],
    store: str,
    epochs: Positive = 50,
    patience: Annotated[int, Field(ge=0)] = 5,
    seed: Annotated[int, Field(ge=0, lt=2**32)] = 0,
    backbone_weights: BackboneWeights = "imagenet",
    backbone_weights_sha256: Sha256 | None = None,
    image_size: ImageSize = 224,
    augment_views: Annotated[int, Field(ge=0, le=64)] = 2,
    promotion_margin: Annotated[float, Field(ge=0, le=1)] = 0.005,
    training_path: TrainingPath = "cached",
    layout: Layout = "auto",
    s3_endpoint_url: str | None = None,
    recipe: Recipe = DEFAULT_RECIPE,
    skip_unchanged: bool = False,
) -> dict:
    """Train the paper's model on labelled cells, evaluate it, register it, promote it if no worse.

    Every parameter is checked (its type, then that every source and a weights file exist) before
    anything is written (:mod:`flows.parameters`).

    Args:
        sources: labelled cell collections (patient, class or manifest layout; fsspec URLs),
            trained on together: each label weighs half, shared equally by the sources that
            hold it (:func:`aml_model.sampling.balanced_weights`).
        store: run store and model registry.
        epochs, patience, seed: training length, early-stopping patience, and the seed of
            the split, initialisation, shuffling and augmentation.
        backbone_weights: "imagenet", a weights file path/URL, or "none".
        backbone_weights_sha256: checked against the weights file when given.
        image_size: model input side, pixels (224 in the paper).
        augment_views: augmented views per training cell in the feature cache (cached path).
        promotion_margin: tolerated drop of ROC AUC against the champion.
        training_path: "cached" (head on cached backbone features) or "plain" (backbone in the
            loop, augmentation each epoch).
        layout, s3_endpoint_url: as for ``ingest``.
        recipe: "paper" (Hassan et al. unchanged) or "robust" (scale and colour normalisation
            layers in the model, colour, stain-transfer and scale augmentation; docs/design.md,
            "The model and its recipes").
        skip_unchanged: train nothing when the labelled data (after ingest), the code and the
            configuration are those of the champion's card (the nightly sets it); the result then
            has ``skipped: True``, the champion's version and the reason.

    Returns:
        skipped (False), version, promoted, decision reason, test metrics, embedded count, sizes and wall time.
    """
    logger = get_run_logger()
    started, began = time.perf_counter(), datetime.now(UTC)
    # The parameters' types were checked before this line. Every source, and a weights file, must
    # exist before the first source is ingested.
    require_existing(sources, "source", s3_endpoint_url)
    if backbone_weights.lower() not in ("imagenet", "none"):
        require_existing([backbone_weights], "backbone_weights", s3_endpoint_url)
    config = ExperimentConfig.for_recipe(
        recipe,
        ModelConfig(image_size=image_size, backbone_weights=backbone_weights,
                    backbone_weights_sha256=backbone_weights_sha256),
        TrainConfig(epochs=epochs, early_stopping_patience=patience, seed=seed),
    )
    store_options = storage.storage_options_for(store, s3_endpoint_url)
    runs = [ingest(source=s, store=store, layout=layout, image_size=image_size, s3_endpoint_url=s3_endpoint_url)
            for s in sources]
    paths = [storage.RunPaths(store, r["run_id"]) for r in runs]
    data = load_training_set(paths, store_options, sources)
    logger.info("%d labelled cells (%d blast); %d cells without a label are not used; %d duplicate images dropped",
                len(data.cells), data.y.sum(), data.n_unlabelled, data.n_duplicates)
    if len(data.cells) < 10 or len(np.unique(data.y)) < 2:
        message = f"training needs labelled cells of both classes; found {len(data.cells)} ({data.y.sum()} blast)"
        raise ValueError(message)
    if skip_unchanged:
        settings = {"config": config.to_dict(), "recipe": recipe, "training_path": training_path,
                    "augment_views": augment_views}
        champion = champion_card(store, store_options)
        unchanged = unchanged_since_champion(champion, data.data_hash, code_version(), settings)
        if unchanged:
            return _skipped(champion["version"], unchanged, recipe, time.perf_counter() - started)
    n_patients = data.cells["patient_id"].nunique()
    by_patient = all(r["layout"] != "class" for r in runs) and n_patients >= round(1 / config.train.test_fraction)
    fractions = (config.train.train_fraction, config.train.val_fraction, config.train.test_fraction)
    # By cell, every source, cell type and label keeps its share in each split.
    strata = (data.cells["source"] + "/" + data.cells["cell_type"].fillna("") + "/" + data.cells["label"]).to_numpy()
    split = split_indices(data.y, data.cells["patient_id"].to_numpy() if by_patient else None, fractions, seed,
                          strata=None if by_patient else strata)
    sources_of = data.cells["source"].to_numpy()
    weights = balanced_weights(sources_of[split["train"]], data.y[split["train"]])
    logger.info("split by %s (seed %d): %s", "patient" if by_patient else "cell", seed,
                {k: len(v) for k, v in split.items()})

    backbone_id, _, feature_shape = prepare_backbone(config.model, store, store_options, seed)
    cache = FeatureCache(store, backbone_id, store_options)
    test = data.cells.iloc[split["test"]].reset_index(drop=True)
    embedded = 0
    if training_path == "cached":
        views = [data.cells.iloc[split["train"]].assign(view=v) for v in range(augment_views + 1)]
        needed = pd.concat([*views, data.cells.iloc[split["val"]].assign(view=0)], ignore_index=True)
        rows, embedded = embed_missing(cache, needed, feature_shape, config)
        logger.info("feature cache %s: %d new embeddings, %d reused", backbone_id, embedded, len(needed) - embedded)
        n_train = sum(len(v) for v in views)
        y_train = np.tile(data.y[split["train"]], augment_views + 1)
        model, history, best, p_test, attempts = train_on_features(
            cache, config, feature_shape, rows[:n_train], y_train, rows[n_train:], data.y[split["val"]], test,
            store_options, train_weights=np.tile(weights, augment_views + 1),
            val_weights=balanced_weights(sources_of[split["val"]], data.y[split["val"]]))
    else:
        model, history, best, p_test, attempts = train_plain(
            cache, config, data.cells, data.y, split, store_options, train_weights=weights,
            val_weights=balanced_weights(sources_of[split["val"]], data.y[split["val"]]))

    y_test = data.y[split["test"]]
    metrics = compute_metrics(y_test, p_test, config.threshold)
    logger.info("test metrics: accuracy %.3f, sensitivity %.3f, specificity %.3f, F1 %.3f, ROC AUC %.3f",
                metrics.accuracy, metrics.sensitivity, metrics.specificity, metrics.f1, metrics.roc_auc)
    by_source = rates_by_group(test, p_test, config.threshold, ["source"])
    by_type = rates_by_group(test, p_test, config.threshold, ["source", "cell_type"])
    parent, comparisons = champion_comparisons(store, store_options, model, image_size, test, y_test, p_test,
                                               config.threshold)
    decision = decide_promotion(comparisons, promotion_margin)
    card = {
        "config": config.to_dict(), "recipe": recipe, "training_path": training_path,
        "augment_views": augment_views,
        "backbone": {"id": backbone_id, "weights": backbone_weights, "weights_file": cache.weights},
        "data": {"sources": sources, "runs": [p.root for p in paths], "sha256": data.data_hash,
                 "n_labelled": len(data.cells), "n_unlabelled": data.n_unlabelled, "n_duplicates": data.n_duplicates,
                 "per_source": group_counts(data.cells["source"].to_numpy(), data.y),
                 "train_per_source": group_counts(data.cells["source"].to_numpy()[split["train"]],
                                                  data.y[split["train"]])},
        "split": {"seed": seed, "by": "patient" if by_patient else "cell",
                  "sizes": {k: len(v) for k, v in split.items()},
                  "patients": {k: sorted(set(data.cells["patient_id"].iloc[v])) for k, v in split.items()}
                  if by_patient else None},
        "metrics": metrics.to_dict(), "history": history, "best_epoch": best, "parent": parent,
        "training_attempts": attempts,
        "evaluation": {"by_source": by_source.to_dict("records"), "by_source_and_type": by_type.to_dict("records")},
        "promotion": {"promoted": decision.promote, "reason": decision.reason, "margin": promotion_margin,
                      "comparisons": {name: {"challenger": a.to_dict(), "champion": b.to_dict()}
                                      for name, (a, b) in comparisons.items()}},
        "embedded": embedded, "started_at": began.isoformat(), "finished_at": datetime.now(UTC).isoformat(),
    }
    ref = register_challenger(model, card, evaluation_files(history, metrics, y_test, p_test), test, p_test,
                              store, store_options)
    if decision.promote:
        set_champion(store, ref.version, store_options, reason=decision.reason)
        emit_model_promoted(store, ref.version, parent, decision.reason, by="retrain")
    logger.info("registered %s: %s", ref.version, "promoted to champion" if decision.promote else decision.reason)
    rows_table = [{"model": "challenger", "test set": "own", **metrics.to_dict()}]
    rows_table += [{"model": who, "test set": name, **m.to_dict()}
                   for name, (a, b) in comparisons.items() for who, m in (("challenger", a), ("champion", b))]
    create_table_artifact(key="retrain-metrics", table=rows_table, description=f"test metrics of {ref.version}")
    create_table_artifact(key="retrain-rates-by-type", table=by_type.to_dict("records"),
                          description=f"{ref.version}: blast-like rate of the test cells per source and cell type")
    folder = storage.join(store, "models", ref.version)
    create_markdown_artifact(key="retrain-report", markdown="\n".join([
        f"# Model {ref.version}", "", f"**{'Promoted to champion' if decision.promote else 'Kept as a candidate'}**: "
        f"{decision.reason}", "", f"Test ROC AUC {metrics.roc_auc:.3f}, accuracy {metrics.accuracy:.3f}, "
        f"sensitivity {metrics.sensitivity:.3f}, specificity {metrics.specificity:.3f}, F1 {metrics.f1:.3f}.", "",
        *[f"- `{storage.join(folder, name)}`" for name in ("learning_curves.png", "confusion_matrix.png",
                                                          "roc_curve.png", "f1_curve.png", "model_card.json")]]),
        description=f"retrain report {ref.version}")
    return {"skipped": False, "version": ref.version, "model": ref.url, "promoted": decision.promote, "reason": decision.reason,
            "metrics": metrics.to_dict(), "embedded": embedded, "split": card["split"]["sizes"],
            "recipe": recipe, "rates_by_type": by_type.to_dict("records"), "training_attempts": attempts,
            "seconds": time.perf_counter() - started}
