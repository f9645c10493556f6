"""The ``retrain-and-evaluate`` flow: ingest -> split -> embed -> train -> evaluate -> register -> promote.

The flow plans, waits and writes small records; decoding, embedding, training, test scoring and
the champion comparison are tasks on its task runner (the Dask workers).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger
from pydantic import Field

from aml_model.config import DEFAULT_RECIPE, ExperimentConfig, ModelConfig, TrainConfig
from aml_model.evaluate import compute_metrics, rates_by_group
from aml_model.promotion import decide_promotion, unchanged_since_champion
from aml_model.sampling import balanced_weights
from aml_model.split import training_split
from flows.ingest import CHUNKS_PER_TASK, ensure_ingested, plan_source
from flows.parameters import (BackboneWeights, ImageSize, Layout, Positive, Recipe, Sha256, TrainingPath,
                              require_existing)
from tasks import storage
from tasks.devices import model_tasks
from tasks.events import emit_model_promoted
from tasks.features import FeatureCache, embed_missing, prepare_backbone_task
from tasks.registry import champion_card, code_version, set_champion
from tasks.retrain_report import model_card, publish_retrain_report, publish_skipped
from tasks.training import (TrainedModel, TrainingSet, compare_with_champion, evaluation_files, load_training_set,
                            register_challenger, train_on_features, train_plain)

__all__ = ["retrain_and_evaluate"]

def _ingest_sources(sources: list[str], store: str, layout: str, image_size: int,
                    s3_endpoint_url: str | None) -> tuple[list[storage.RunPaths], bool]:
    """Ingest every source on the task runner, each planned before any is decoded; returns the runs
    and whether all name patients."""
    plans = [plan_source(s, store, layout, image_size, s3_endpoint_url) for s in sources]
    for plan in plans:
        ensure_ingested(plan, CHUNKS_PER_TASK)
    return [p.paths for p in plans], all(p.found.layout != "class" for p in plans)


def _skip_if_unchanged(store: str, store_options: dict, data: TrainingSet, config: ExperimentConfig,
                       settings: dict) -> dict | None:
    """The result of a run that trains nothing, when the data, code and configuration are the
    champion's (:func:`aml_model.promotion.unchanged_since_champion`); None otherwise."""
    champion = champion_card(store, store_options)
    reason = unchanged_since_champion(champion, data.data_hash, code_version(), {"config": config.to_dict(), **settings})
    if not reason:
        return None
    get_run_logger().info("training skipped: %s", reason)
    publish_skipped(champion["version"], reason)
    return {"skipped": True, "version": champion["version"], "model": None, "promoted": False, "reason": reason,
            "recipe": settings["recipe"]}


def _train(config: ExperimentConfig, data: TrainingSet, split: dict, test: pd.DataFrame, training_path: str,
           augment_views: int, store: str, store_options: dict) -> tuple[TrainedModel, str, str, int]:
    """Build the backbone, embed what the feature cache lacks and train, each as a task on a worker;
    ``test`` is ``data.cells`` at ``split["test"]``, which the training task scores.

    Returns:
        (the staged model, backbone id, stored backbone weights URL, rows embedded).
    """
    backbone_id, weights, feature_shape = prepare_backbone_task.submit(config.model, store, store_options,
                                                                       config.train.seed).result()
    cache = FeatureCache(store, backbone_id, store_options)
    sources = data.cells["source"].to_numpy()
    weights_of = {name: balanced_weights(sources[split[name]], data.y[split[name]]) for name in ("train", "val")}
    if training_path == "plain":
        with model_tasks():
            trained = train_plain.submit(cache, config, data.cells, data.y, split, store_options,
                                         train_weights=weights_of["train"], val_weights=weights_of["val"])
        return trained.result(), backbone_id, weights, 0
    views = [data.cells.iloc[split["train"]].assign(view=v) for v in range(augment_views + 1)]
    needed = pd.concat([*views, data.cells.iloc[split["val"]].assign(view=0)], ignore_index=True)
    rows, embedded = embed_missing(cache, needed, feature_shape, config)
    get_run_logger().info("feature cache %s: %d new embeddings, %d reused", backbone_id, embedded,
                          len(needed) - embedded)
    n_train = sum(len(v) for v in views)
    with model_tasks():
        trained = train_on_features.submit(
            cache, config, feature_shape, rows[:n_train], np.tile(data.y[split["train"]], augment_views + 1),
            rows[n_train:], data.y[split["val"]], test, store_options,
            train_weights=np.tile(weights_of["train"], augment_views + 1), val_weights=weights_of["val"])
    return trained.result(), backbone_id, weights, embedded


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
        recipe, ModelConfig(image_size=image_size, backbone_weights=backbone_weights,
                            backbone_weights_sha256=backbone_weights_sha256),
        TrainConfig(epochs=epochs, early_stopping_patience=patience, seed=seed))
    settings = {"recipe": recipe, "training_path": training_path, "augment_views": augment_views}
    store_options = storage.storage_options_for(store, s3_endpoint_url)

    paths, patients_known = _ingest_sources(sources, store, layout, image_size, s3_endpoint_url)
    data = load_training_set(paths, store_options, sources)
    logger.info("%d labelled cells (%d blast); %d cells without a label are not used; %d duplicate images dropped",
                len(data.cells), data.y.sum(), data.n_unlabelled, data.n_duplicates)
    if len(data.cells) < 10 or len(np.unique(data.y)) < 2:
        message = f"training needs labelled cells of both classes; found {len(data.cells)} ({data.y.sum()} blast)"
        raise ValueError(message)
    skipped = skip_unchanged and _skip_if_unchanged(store, store_options, data, config, settings)
    if skipped:
        return {**skipped, "seconds": time.perf_counter() - started}
    fractions = (config.train.train_fraction, config.train.val_fraction, config.train.test_fraction)
    split, by_patient = training_split(data.cells, data.y, fractions, seed, patients_known)
    logger.info("split by %s (seed %d): %s", "patient" if by_patient else "cell", seed,
                {k: len(v) for k, v in split.items()})

    test, y_test = data.cells.iloc[split["test"]].reset_index(drop=True), data.y[split["test"]]
    trained, backbone_id, weights_file, embedded = _train(config, data, split, test, training_path, augment_views,
                                                          store, store_options)
    metrics = compute_metrics(y_test, trained.p_test, config.threshold)
    logger.info("test metrics: accuracy %.3f, sensitivity %.3f, specificity %.3f, F1 %.3f, ROC AUC %.3f",
                metrics.accuracy, metrics.sensitivity, metrics.specificity, metrics.f1, metrics.roc_auc)
    evaluation = {"by_source": rates_by_group(test, trained.p_test, config.threshold, ["source"]),
                  "by_source_and_type": rates_by_group(test, trained.p_test, config.threshold, ["source", "cell_type"])}
    with model_tasks():
        comparing = compare_with_champion.submit(store, store_options, trained.ref, test, y_test, trained.p_test,
                                                 config.threshold)
    parent, comparisons = comparing.result()
    decision = decide_promotion(comparisons, promotion_margin)
    card = model_card(config, settings, {"id": backbone_id, "weights": backbone_weights, "weights_file": weights_file},
                      data, sources, [p.root for p in paths], split, by_patient, trained, metrics, evaluation, parent,
                      comparisons, decision, promotion_margin, embedded, began)
    ref = register_challenger(trained, card, evaluation_files(trained.history, metrics, y_test, trained.p_test),
                              test, store, store_options)
    if decision.promote:
        set_champion(store, ref.version, store_options, reason=decision.reason)
        emit_model_promoted(store, ref.version, parent, decision.reason, by="retrain")
    logger.info("registered %s: %s", ref.version, "promoted to champion" if decision.promote else decision.reason)
    publish_retrain_report(ref, card, store)
    return {"skipped": False, "version": ref.version, "model": ref.url, "promoted": decision.promote,
            "reason": decision.reason, "metrics": metrics.to_dict(), "embedded": embedded,
            "split": card["split"]["sizes"], "recipe": recipe, "training_attempts": trained.attempts,
            "rates_by_type": card["evaluation"]["by_source_and_type"], "seconds": time.perf_counter() - started}
