"""One train-and-evaluate run of the paper's procedure on in-memory cells."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from aml_model.architecture import build_model
from aml_model.config import ExperimentConfig
from aml_model.evaluate import BinaryMetrics, compute_metrics
from aml_model.predict import predict_batch
from aml_model.split import split_indices
from aml_model.train import TrainingHistory, train_model

__all__ = ["ExperimentResult", "run_experiment"]


@dataclass(frozen=True)
class ExperimentResult:
    """What a run produced.

    Attributes:
        model: the trained model, best epoch's weights.
        history: per-epoch training and validation metrics.
        best_epoch: 0-based index of the restored epoch.
        split: indices of the cells in each split.
        test_probabilities: `(n_test,)` float32 blast probabilities of the test cells.
        metrics: test-set metrics at the configured threshold.
    """

    model: keras.Model
    history: TrainingHistory
    best_epoch: int
    split: dict[str, np.ndarray]
    test_probabilities: np.ndarray
    metrics: BinaryMetrics


def run_experiment(
    images: np.ndarray,
    labels: np.ndarray,
    config: ExperimentConfig,
    groups: np.ndarray | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> ExperimentResult:
    """Split, build, train (augmented, early stopping) and evaluate on the test split.

    Args:
        images: `(n, s, s, 3)` uint8 cells, s = ``config.model.image_size``.
        labels: `(n,)` 0/1, 1 = blast.
        config: the experiment; ``ExperimentConfig()`` is the paper's.
        groups: `(n,)` patient ids to split by patient, or None to split by cell.
        callbacks: extra Keras callbacks for ``fit``.
    """
    labels = np.asarray(labels, dtype=int)
    train_cfg = config.train
    split = split_indices(
        labels,
        groups,
        (train_cfg.train_fraction, train_cfg.val_fraction, train_cfg.test_fraction),
        train_cfg.seed,
    )
    keras.utils.set_random_seed(train_cfg.seed)
    model = build_model(config.model)
    history, best_epoch = train_model(
        model,
        images[split["train"]],
        labels[split["train"]],
        images[split["val"]],
        labels[split["val"]],
        train_cfg,
        callbacks,
    )
    test_probabilities = predict_batch(model, images[split["test"]])
    metrics = compute_metrics(labels[split["test"]], test_probabilities, config.threshold)
    return ExperimentResult(model, history, best_epoch, split, test_probabilities, metrics)
