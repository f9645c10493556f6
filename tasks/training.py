"""Training tasks: gather labelled cells, train (cached or plain path), evaluate, register, promote."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from dataclasses import dataclass

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from aml_model.config import ScoringConfig
from aml_model.evaluate import BinaryMetrics, compute_metrics
from aml_model.zarr_rows import Rows
from tasks.registry import (
    CARD_FILE,
    MODEL_FILE,
    ModelRef,
    finish_registration,
    models_root,
    resolve_model,
    stage_model,
)
from tasks.retry import store_task
from tasks.store import Store, join
from tasks.store_layout import RunPaths
from tasks.throttle import Throttle

__all__ = [
    "TrainedModel",
    "TrainingSet",
    "cell_rows",
    "compare_with_champion",
    "evaluation_files",
    "fit_head",
    "load_cells",
    "load_training_set",
    "predict_cells",
    "register_challenger",
    "train_on_features",
    "train_plain",
]

TEST_PREDICTIONS = "test_predictions.parquet"
#: Cells the reduced precisions are checked on (:func:`agreement_cells`). The guard is the largest
#: |dp| over them, and a maximum grows with the cells it is taken over: the scoring benchmark's model
#: recorded 0.020 on its 40 test cells and measured 0.059 on 1,000 held-out cells, over the 0.05
#: guard. So the maximum is taken over up to this many cells (more cells, not a quantile: the guard
#: stays "no cell moves by more than 0.05"); float16 emulated on a CPU (~35 cells/s at 224 px) then
#: costs about 30 s a retrain.
AGREEMENT_CELLS = 1024


@dataclass
class TrainingSet:
    """Labelled cells of the training runs, deduplicated by image hash.

    ``cells`` has cell_id, patient_id, sha256, label, cell_type (None where the layout names
    none), source (the source the cell was ingested from), zarr_index and cells_zarr (the
    run's array); ``y`` is `(n,)` 0/1 (1 = blast).
    """

    cells: pd.DataFrame
    y: np.ndarray
    n_unlabelled: int
    n_duplicates: int

    @property
    def data_hash(self) -> str:
        """A fingerprint of the training data: the sorted image hashes with their labels."""
        pairs = sorted(zip(self.cells["sha256"], self.cells["label"], strict=True))
        return hashlib.sha256(repr(pairs).encode()).hexdigest()


@dataclass(frozen=True)
class TrainedModel:
    """What a training task hands back: the model staged in the registry (no card yet, so not
    resolvable: :func:`tasks.registry.stage_model`) and what the flow records about it.

    Attributes:
        ref: the staged model's URL, version and input size.
        history: per-epoch metric lists.
        best_epoch: 0-based index of the restored epoch.
        p_test: `(n_test,)` blast probabilities of the test cells, in their order.
        attempts: one dict of validation figures per training attempt (collapse guard).
        precision_agreement: the largest |p - p_float32| of each reduced precision on (up to
            :data:`AGREEMENT_CELLS` of) the test cells, for ``precision="auto"``.
    """

    ref: ModelRef
    history: dict
    best_epoch: int
    p_test: np.ndarray
    attempts: list[dict]
    precision_agreement: dict[str, float]


def load_training_set(
    run_roots: list[RunPaths], sources: list[str] | None = None, labelled_only: bool = True
) -> TrainingSet:
    """Read the runs' cell tables and keep the labelled cells, each image once (the first
    source that holds it keeps it).

    Args:
        run_roots: one ingest run per source (each read through its own store).
        sources: the source of each run, for per-source balance and figures; the run ids
            when omitted.
        labelled_only: keep only labelled cells (training); else every cell (pretraining), and
            ``y`` is 1 for the labelled blasts only.
    """
    names = sources or [paths.root for paths in run_roots]
    frames = [
        paths.store.read_table(paths.cells_table).assign(cells_zarr=paths.cells_zarr, source=name)
        for paths, name in zip(run_roots, names, strict=True)
    ]
    cells = pd.concat(frames, ignore_index=True)
    if "cell_type" not in cells:
        cells["cell_type"] = None
    labelled = cells[cells["label"].notna()] if labelled_only else cells
    unique = labelled.drop_duplicates("sha256", keep="first").reset_index(drop=True)
    return TrainingSet(
        unique,
        (unique["label"] == "blast").to_numpy(int),
        len(cells) - len(labelled),
        len(labelled) - len(unique),
    )


def cell_rows(frame: pd.DataFrame, store: Store) -> Rows:
    """The uint8 images of the given cells (cells_zarr, zarr_index), in the frame's order, unread:
    index the result with positions to read them, or train on it a batch at a time. ``store``
    reaches the cells_zarr URLs (its options are used)."""
    return Rows.named(
        frame["cells_zarr"], frame["zarr_index"], lambda url: store.open_cells_array(url)
    )


def load_cells(frame: pd.DataFrame, store: Store) -> np.ndarray:
    """The uint8 images of the given cells (cells_zarr, zarr_index), in the frame's order."""
    if not len(frame):
        return np.empty((0, 0, 0, 3), np.uint8)
    return cell_rows(frame, store)[np.arange(len(frame))]


def predict_cells(model, cells, batch_size: int = ScoringConfig.batch_size) -> np.ndarray:
    """Blast probabilities of cells read a batch at a time (:class:`Rows` or an array)."""
    from aml_model.train import cell_batches

    if not len(cells):
        return np.zeros((0,), np.float32)
    return np.asarray(
        model.predict(cell_batches(cells, None, batch_size), verbose=0), np.float32
    ).reshape(-1)


def evaluation_files(
    history: dict, metrics: BinaryMetrics, y_test: np.ndarray, p_test: np.ndarray
) -> dict[str, bytes]:
    """The paper's four figures as PNG bytes by file name."""
    from aml_model import figures

    return {
        "learning_curves.png": figures.render_learning_curves(history),
        "confusion_matrix.png": figures.render_confusion_matrix(metrics),
        "roc_curve.png": figures.render_roc_curve(y_test, p_test),
        "f1_curve.png": figures.render_f1_curve(y_test, p_test, metrics.threshold),
    }


def _load(ref: ModelRef, store: Store):
    from aml_model.io import load_model

    return load_model(store.local_copy(ref.url, f"{ref.version}.keras", ref.sha256), compile=False)


@store_task("compare-with-champion")
def compare_with_champion(
    store: Store,
    challenger: ModelRef,
    test: pd.DataFrame,
    y_test: np.ndarray,
    p_test: np.ndarray,
    threshold: float,
) -> tuple[str | None, dict[str, tuple[BinaryMetrics, BinaryMetrics]]]:
    """Challenger vs champion metrics on the challenger's test cells and on the champion's.

    Runs where it is submitted (a Dask worker): both models are loaded from the registry there.

    Args:
        challenger: the staged challenger; ``p_test`` are its probabilities of ``test``.

    Returns:
        (champion version or None, {test set name: (challenger metrics, champion metrics)}).
    """
    try:
        ref = resolve_model("champion", store)
    except FileNotFoundError:
        return None, {}
    if ref.image_size != challenger.image_size:
        card = store.read_json(join(models_root(store), ref.version, CARD_FILE))
        recorded = BinaryMetrics(**card["metrics"])
        return ref.version, {
            "each model's own test cells (input sizes differ)": (
                compute_metrics(y_test, p_test, threshold),
                recorded,
            )
        }
    comparisons = {
        "challenger's test cells": (
            compute_metrics(y_test, p_test, threshold),
            compute_metrics(
                y_test, predict_cells(_load(ref, store), cell_rows(test, store)), threshold
            ),
        )
    }
    theirs_url = join(models_root(store), ref.version, TEST_PREDICTIONS)
    if store.exists(theirs_url):
        theirs = store.read_table(theirs_url)
        present = theirs[[store.exists(u) for u in theirs["cells_zarr"]]].reset_index(drop=True)
        if len(present) and present["label"].nunique() == 2:
            y = (present["label"] == "blast").to_numpy(int)
            comparisons["champion's test cells"] = (
                compute_metrics(
                    y, predict_cells(_load(challenger, store), cell_rows(present, store)), threshold
                ),
                compute_metrics(y, present["probability"].to_numpy(), threshold),
            )
    return ref.version, comparisons


def register_challenger(
    trained: TrainedModel, card: dict, figures: dict[str, bytes], test: pd.DataFrame, store: Store
) -> ModelRef:
    """Complete the staged model's registration: figures, test predictions, then its card."""
    predictions = test[["cell_id", "sha256", "label", "cells_zarr", "zarr_index"]].assign(
        probability=trained.p_test
    )
    buffer = io.BytesIO()
    predictions.to_parquet(buffer, index=False)
    return finish_registration(
        trained.ref, card, store, extra_files={**figures, TEST_PREDICTIONS: buffer.getvalue()}
    )


def agreement_cells(cells: pd.DataFrame, split: dict) -> pd.DataFrame:
    """Up to :data:`AGREEMENT_CELLS` of the labelled ``cells``: the test cells, then the validation
    cells, then the training cells. How far a reduced precision moves a probability is arithmetic,
    not generalisation, so cells the model was fitted on count as well; the test set alone (10%)
    is often too small for a maximum that holds on a scoring's cells.

    Args:
        cells: the labelled cells (cells_zarr, zarr_index); ``split`` holds positions in it.
    """
    order = np.concatenate(
        [np.asarray(split[name], dtype=int) for name in ("test", "val", "train")]
    )
    return cells.iloc[order[:AGREEMENT_CELLS]]


def _measure_agreement(
    model, cells: pd.DataFrame, store: Store, batch_size: int
) -> dict[str, float]:
    """:func:`aml_model.precision.precision_agreement` on up to :data:`AGREEMENT_CELLS` of ``cells``,
    read ``batch_size`` cells at a time."""
    from aml_model.precision import precision_agreement

    rows, n = cell_rows(cells, store), min(len(cells), AGREEMENT_CELLS)
    batches = (
        rows[np.arange(start, min(start + batch_size, n))] for start in range(0, n, batch_size)
    )
    return precision_agreement(model, batches, batch_size=batch_size)


def _stage(model, store: Store) -> ModelRef:
    from aml_model.io import save_model

    with tempfile.TemporaryDirectory() as folder:
        return stage_model(str(save_model(model, os.path.join(folder, MODEL_FILE))), store)


def _record(check) -> dict:
    return {
        "val_auc": check.val_auc,
        "spread": check.spread,
        "predicted_blast_fraction": check.predicted_blast_fraction,
        "collapsed": check.collapsed,
        "reason": check.reason,
    }


def _logger():
    """The task's run logger; the module's logger outside a run (a direct call in a test or benchmark)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def _epoch_lines():
    """A Keras callback that logs epochs (loss, validation loss and AUC), rate-limited, through the
    task's run logger (the module's logger outside a run)."""
    from aml_model.train import EpochReport

    logger = _logger()
    throttle = Throttle()

    def report(epoch: int, epochs: int, logs: dict[str, float]) -> None:
        if throttle.due(final=epoch == epochs):
            logger.info(
                "epoch %d/%d: loss %.4f, val_loss %.4f, val AUC %.3f",
                epoch,
                epochs,
                logs.get("loss", np.nan),
                logs.get("val_loss", np.nan),
                logs.get("val_auc", np.nan),
            )

    return EpochReport(report)


def _log_trained(history: dict, best: int) -> None:
    """The line that ends a training's progress: epochs run and the restored epoch's figures."""
    logger = _logger()
    logger.info(
        "trained %d epochs; best epoch %d: val_loss %.4f, val AUC %.3f",
        len(history["val_loss"]),
        best + 1,
        history["val_loss"][best],
        history.get("val_auc", [np.nan] * (best + 1))[best],
    )


def _train_guarded(config, y_val: np.ndarray, attempt) -> tuple:
    """Train with ``attempt(train_config) -> (model, history, best epoch, validation probabilities)``,
    drawing again from a derived seed while the validation predictions collapse
    (:mod:`aml_model.collapse`), up to :data:`aml_model.collapse.MAX_ATTEMPTS` times; then training
    fails and nothing is registered.

    Returns:
        (model, history, best epoch, attempts: one dict of validation figures each).
    """
    import dataclasses

    from aml_model.collapse import MAX_ATTEMPTS, attempt_seed, check_collapse, require_not_collapsed

    checks = []
    for number in range(MAX_ATTEMPTS):
        train_config = dataclasses.replace(
            config.train, seed=attempt_seed(config.train.seed, number)
        )
        model, history, best, p_val = attempt(train_config)
        checks.append(check_collapse(y_val, p_val, config.threshold))
        if not checks[-1].collapsed:
            break
    require_not_collapsed(checks)
    return model, history, best, [_record(c) for c in checks]


def fit_head(
    cache,
    config,
    feature_shape,
    train_rows,
    y_train_rows,
    val_rows,
    y_val,
    train_weights=None,
    val_weights=None,
) -> tuple:
    """Fit the head on cache rows read from the store a batch at a time, with the collapse guard.

    Args:
        cache: :class:`tasks.features.FeatureCache`.
        train_rows, val_rows: cache rows of the training views and the validation cells.
        y_train_rows, y_val: their 0/1 labels.
        train_weights, val_weights: their loss weights.

    Returns:
        (head, history, best epoch, attempts: one dict of validation figures each).
    """
    from aml_model.architecture import build_head, seed_weights
    from aml_model.train import feature_batches, train_head

    train_features, val_features = cache.rows(train_rows), cache.rows(val_rows)

    def attempt(train_config):
        # The head's initialisation is part of the seeded run.
        head = seed_weights(build_head(feature_shape, config.model), train_config.seed)
        history, best = train_head(
            head,
            train_features,
            y_train_rows,
            val_features,
            y_val,
            train_config,
            train_weights=train_weights,
            val_weights=val_weights,
            callbacks=[_epoch_lines()],
        )
        _log_trained(history, best)
        p_val = head.predict(
            feature_batches(val_features, None, config.train.batch_size), verbose=0
        ).reshape(-1)
        return head, history, best, p_val

    return _train_guarded(config, y_val, attempt)


def _cached_backbone(cache, config):
    """The model configuration with the feature cache's backbone weights (the exact weights the
    features were computed with, :func:`tasks.features.prepare_backbone`) as a local file, for
    building the model in this task only: the cards record ``config`` itself."""
    import dataclasses

    local = cache.store.local_copy(cache.weights, f"{cache.backbone_id}.weights.h5")
    return dataclasses.replace(config.model, backbone_weights=local, backbone_weights_sha256=None)


@task(name="train-head-on-features", cache_policy=NO_CACHE)
def train_on_features(
    cache,
    config,
    feature_shape,
    train_rows,
    y_train_rows,
    val_rows,
    y_val,
    test: pd.DataFrame,
    train_weights=None,
    val_weights=None,
    agreement: pd.DataFrame | None = None,
):
    """Cached path: fit the head on cached features (:func:`fit_head`), assemble the full model,
    score the test cells (cells_zarr, zarr_index) read a batch at a time, and stage the model in
    the cache's store. Submitted to the flow's task runner, it runs on a Dask worker.

    ``agreement`` holds the cells the reduced precisions are checked on (:func:`agreement_cells`);
    the test cells when it is None.

    Returns:
        :class:`TrainedModel`: the staged model's reference, not the Keras object.
    """
    from aml_model.architecture import assemble_model

    head, history, best, attempts = fit_head(
        cache,
        config,
        feature_shape,
        train_rows,
        y_train_rows,
        val_rows,
        y_val,
        train_weights,
        val_weights,
    )
    store = cache.store
    model = assemble_model(_cached_backbone(cache, config), head)
    p_test = predict_cells(model, cell_rows(test, store))
    return TrainedModel(
        _stage(model, store),
        history,
        best,
        p_test,
        attempts,
        _measure_agreement(
            model, test if agreement is None else agreement, store, config.train.batch_size
        ),
    )


@task(name="train-plain", cache_policy=NO_CACHE)
def train_plain(cache, config, cells: pd.DataFrame, y, split, train_weights=None, val_weights=None):
    """Plain path: the full model in the loop, augmentation on the fly every epoch, cells read
    from their runs' cells.zarr a batch at a time; the same collapse guard as :func:`fit_head`.
    The model is staged in the cache's store, as :func:`train_on_features` does.

    Args:
        cells: the labelled cells (cells_zarr, zarr_index); ``split`` holds positions in it.

    Returns:
        :class:`TrainedModel`.
    """
    import keras

    from aml_model.architecture import build_model
    from aml_model.train import train_model

    store = cache.store
    model_config = _cached_backbone(cache, config)
    images = cell_rows(cells, store)
    train, val = images.subset(split["train"]), images.subset(split["val"])

    def attempt(train_config):
        keras.utils.set_random_seed(train_config.seed)
        model = build_model(model_config)
        history, best = train_model(
            model,
            train,
            y[split["train"]],
            val,
            y[split["val"]],
            train_config,
            callbacks=[_epoch_lines()],
            train_weights=train_weights,
            val_weights=val_weights,
        )
        _log_trained(history, best)
        return model, history, best, predict_cells(model, val)

    model, history, best, attempts = _train_guarded(config, y[split["val"]], attempt)
    p_test = predict_cells(model, images.subset(split["test"]))
    return TrainedModel(
        _stage(model, store),
        history,
        best,
        p_test,
        attempts,
        _measure_agreement(model, agreement_cells(cells, split), store, config.train.batch_size),
    )
