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

from aml_model.config import ExperimentConfig
from aml_model.evaluate import compute_metrics, confident_errors, rates_by_group
from aml_model.promotion import decide_promotion, unchanged_since_champion
from aml_model.sampling import balanced_weights
from aml_model.split import training_split
from flows.ingest import ingest_sources
from flows.parameters import RetrainOptions, require_existing
from flows.progress import results_with_progress
from tasks.backbones import resolve_backbone, with_backbone
from tasks.devices import model_tasks
from tasks.events import emit_model_promoted
from tasks.features import FeatureCache, embed_missing, embed_shard, prepare_backbone_task
from tasks.registry import champion_card, code_version, set_champion
from tasks.retrain_report import REVIEW_COLUMNS, model_card, publish_retrain_report, publish_skipped
from tasks.store import Store
from tasks.store_layout import RunPaths
from tasks.training import (
    TrainedModel,
    TrainingSet,
    agreement_cells,
    compare_with_champion,
    evaluation_files,
    load_training_set,
    register_challenger,
    train_on_features,
    train_plain,
)

__all__ = ["retrain_and_evaluate"]


def _skip_if_unchanged(
    store: Store, data: TrainingSet, config: ExperimentConfig, settings: dict
) -> dict | None:
    """The result of a run that trains nothing, when the data, code and configuration are the
    champion's (:func:`aml_model.promotion.unchanged_since_champion`); None otherwise."""
    champion = champion_card(store)
    reason = unchanged_since_champion(
        champion, data.data_hash, code_version(), {"config": config.to_dict(), **settings}
    )
    if not reason:
        return None
    get_run_logger().info("training skipped: %s", reason)
    publish_skipped(champion["version"], reason)
    return {
        "skipped": True,
        "version": champion["version"],
        "model": None,
        "promoted": False,
        "reason": reason,
        "recipe": settings["recipe"],
    }


def _labelled_cells(paths: list[RunPaths], sources: list[str]) -> TrainingSet:
    """The ingested cells with a label, of both classes (``ValueError`` otherwise)."""
    data = load_training_set(paths, sources)
    get_run_logger().info(
        "%d labelled cells (%d blast); %d cells without a label are not used; %d duplicate "
        "images dropped",
        len(data.cells),
        data.y.sum(),
        data.n_unlabelled,
        data.n_duplicates,
    )
    if len(data.cells) < 10 or len(np.unique(data.y)) < 2:
        message = f"training needs labelled cells of both classes; found {len(data.cells)} ({data.y.sum()} blast)"
        raise ValueError(message)
    return data


def _split(data: TrainingSet, config: ExperimentConfig, patients_known: bool) -> tuple[dict, bool]:
    """The train/validation/test split, by patient where every source names patients."""
    train = config.train
    split, by_patient = training_split(
        data.cells,
        data.y,
        (train.train_fraction, train.val_fraction, train.test_fraction),
        train.seed,
        patients_known,
    )
    get_run_logger().info(
        "split by %s (seed %d): %s",
        "patient" if by_patient else "cell",
        train.seed,
        {k: len(v) for k, v in split.items()},
    )
    return split, by_patient


def _train(
    config: ExperimentConfig,
    data: TrainingSet,
    split: dict,
    test: pd.DataFrame,
    options: RetrainOptions,
    store: Store,
) -> tuple[TrainedModel, dict, int]:
    """Build the backbone, embed what the feature cache lacks and train, each as a task on a worker;
    ``test`` is ``data.cells`` at ``split["test"]``, which the training task scores.

    Returns:
        (the staged model, the backbone as the model card records it, rows embedded).
    """
    registered = resolve_backbone(options.backbone_weights, store)
    backbone_id, weights, feature_shape = prepare_backbone_task.submit(
        with_backbone(config.model, registered), store, config.train.seed
    ).result()
    backbone = {
        "id": backbone_id,
        "weights": options.backbone_weights,
        "weights_file": weights,
        "registered": registered.summary() if registered else None,
    }
    if registered:
        get_run_logger().info(
            "backbone %s (%s, sha256 %s...)",
            registered.id,
            registered.card.get("method", "?"),
            registered.sha256[:12],
        )
    cache = FeatureCache(store, backbone_id)
    sources = data.cells["source"].to_numpy()
    weights_of = {
        name: balanced_weights(sources[split[name]], data.y[split[name]])
        for name in ("train", "val")
    }
    if options.training_path == "plain":
        with model_tasks():
            trained = train_plain.submit(
                cache,
                config,
                data.cells,
                data.y,
                split,
                train_weights=weights_of["train"],
                val_weights=weights_of["val"],
            )
        return trained.result(), backbone, 0
    views = [
        data.cells.iloc[split["train"]].assign(view=v) for v in range(options.augment_views + 1)
    ]
    needed = pd.concat([*views, data.cells.iloc[split["val"]].assign(view=0)], ignore_index=True)
    rows, embedded = embed_missing(cache, needed, feature_shape, config, _embed_with_progress)
    get_run_logger().info(
        "feature cache %s: %d new embeddings, %d reused",
        backbone_id,
        embedded,
        len(needed) - embedded,
    )
    n_train, copies = sum(len(v) for v in views), options.augment_views + 1
    with model_tasks():
        trained = train_on_features.submit(
            cache,
            config,
            feature_shape,
            rows[:n_train],
            np.tile(data.y[split["train"]], copies),
            rows[n_train:],
            data.y[split["val"]],
            test,
            train_weights=np.tile(weights_of["train"], copies),
            val_weights=weights_of["val"],
            agreement=agreement_cells(data.cells, split),
        )
    return trained.result(), backbone, embedded


def _embed_with_progress(calls: list[tuple]) -> list[int]:
    """Run the embedding shards on the workers, with progress in rows; returns each shard's row count."""
    with model_tasks():
        futures = [embed_shard.submit(*call) for call in calls]
    total, counts = sum(len(call[0]) for call in calls), []

    def line(percent: float, _done: int) -> str:
        return f"embedding {percent:5.1f}%: {sum(counts)}/{total} feature rows"

    for _percent, count in results_with_progress(
        futures, "embed-progress", f"embedding {total} feature rows", line
    ):
        counts.append(count)
    return counts


def _evaluate(
    test: pd.DataFrame,
    y_test: np.ndarray,
    trained: TrainedModel,
    threshold: float,
    store: Store,
    margin: float,
):
    """Test metrics, rates by source and cell type, and the promotion decision against the champion.

    Returns:
        (metrics, evaluation, champion version or None, comparisons, decision).
    """
    metrics = compute_metrics(y_test, trained.p_test, threshold)
    get_run_logger().info(
        "test metrics: accuracy %.3f, sensitivity %.3f, specificity %.3f, F1 %.3f, ROC AUC %.3f",
        metrics.accuracy,
        metrics.sensitivity,
        metrics.specificity,
        metrics.f1,
        metrics.roc_auc,
    )
    evaluation = {
        "by_source": rates_by_group(test, trained.p_test, threshold, ["source"]),
        "by_source_and_type": rates_by_group(
            test, trained.p_test, threshold, ["source", "cell_type"]
        ),
        "to_review": confident_errors(test[list(REVIEW_COLUMNS)], trained.p_test, threshold),
    }
    with model_tasks():
        comparing = compare_with_champion.submit(
            store, trained.ref, test, y_test, trained.p_test, threshold
        )
    parent, comparisons = comparing.result()
    return metrics, evaluation, parent, comparisons, decide_promotion(comparisons, margin)


def _require_inputs(
    sources: list[Store], store: Store, options: RetrainOptions, weights: Store
) -> None:
    """Every source, and the backbone (registered, shipped or the file ``weights``), exists (the
    parameters' types were checked before the flow)."""
    require_existing(sources, "source")
    choice = options.backbone_weights
    if choice.lower() not in ("imagenet", "none") and resolve_backbone(choice, store) is None:
        require_existing([weights], "backbone_weights")


@flow(name="retrain-and-evaluate", validate_parameters=True)
def retrain_and_evaluate(
    sources: Annotated[list[str], Field(min_length=1)],
    store: str,
    options: RetrainOptions = RetrainOptions(),
    s3_endpoint_url: str | None = None,
    skip_unchanged: bool = False,
) -> dict:
    """Train the model on labelled cells, evaluate it, register it, promote it if no worse.

    Every parameter is checked (its type, then that every source and a weights file exist) before
    anything is written (:mod:`flows.parameters`).

    Args:
        sources: labelled cell collections (patient, class or manifest layout; fsspec URLs), trained
            on together: each label weighs half, shared equally by the sources that hold it
            (:func:`aml_model.sampling.balanced_weights`).
        store: run store and model registry.
        options: recipe, backbone, training and promotion (:class:`flows.parameters.RetrainOptions`).
        s3_endpoint_url: S3-compatible endpoint for s3:// URLs.
        skip_unchanged: train nothing when the labelled data (after ingest), the code and the
            configuration are the champion's (the nightly sets it): the result has ``skipped: True``.

    Returns:
        skipped, version, promoted, decision reason, test metrics, embedded count, sizes and wall time.
    """
    started, began = time.perf_counter(), datetime.now(UTC)
    locations, store = (
        [Store.at(source, s3_endpoint_url) for source in sources],
        Store.at(store, s3_endpoint_url),
    )
    _require_inputs(locations, store, options, Store.at(options.backbone_weights, s3_endpoint_url))
    config, settings = options.experiment_config(), options.settings()
    paths, patients_known = ingest_sources(locations, store, options.layout, options.image_size)
    data = _labelled_cells(paths, sources)
    skipped = skip_unchanged and _skip_if_unchanged(store, data, config, settings)
    if skipped:
        return {**skipped, "seconds": time.perf_counter() - started}
    split, by_patient = _split(data, config, patients_known)
    test, y_test = data.cells.iloc[split["test"]].reset_index(drop=True), data.y[split["test"]]
    trained, backbone, embedded = _train(config, data, split, test, options, store)
    metrics, evaluation, parent, comparisons, decision = _evaluate(
        test, y_test, trained, config.threshold, store, options.promotion_margin
    )
    card = model_card(
        config,
        settings,
        backbone,
        data,
        sources,
        [p.root for p in paths],
        split,
        by_patient,
        trained,
        metrics,
        evaluation,
        parent,
        comparisons,
        decision,
        options.promotion_margin,
        embedded,
        began,
    )
    ref = register_challenger(
        trained,
        card,
        evaluation_files(trained.history, metrics, y_test, trained.p_test),
        test,
        store,
    )
    if decision.promote:
        set_champion(store, ref.version, reason=decision.reason)
        emit_model_promoted(store, ref.version, parent, decision.reason, by="retrain")
    get_run_logger().info(
        "registered %s: %s",
        ref.version,
        "promoted to champion" if decision.promote else decision.reason,
    )
    publish_retrain_report(ref, card, store)
    return {
        "skipped": False,
        "version": ref.version,
        "model": ref.url,
        "promoted": decision.promote,
        "reason": decision.reason,
        "metrics": metrics.to_dict(),
        "embedded": embedded,
        "split": card["split"]["sizes"],
        "recipe": options.recipe,
        "training_attempts": trained.attempts,
        "rates_by_type": card["evaluation"]["by_source_and_type"],
        "seconds": time.perf_counter() - started,
    }
