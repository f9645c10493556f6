"""The demo: synthetic cohort -> train the paper's model (small configuration) -> evaluate."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from aml_model.config import ExperimentConfig, PreprocessConfig
from aml_model.preprocess import decode_cell
from aml_model.synthetic import write_synthetic_cohort

DEMO_IMAGE_SIZE = 64


def run_demo(store: Path, epochs: int = 15, echo: Callable[[str], None] = print) -> Path:
    """Generate the synthetic cohort under ``store``, train, evaluate, and write the results.

    Returns:
        The folder holding model.keras, metrics.json and the four figures.
    """
    from aml_model import figures
    from aml_model.experiment import run_experiment
    from aml_model.io import save_model

    data = write_synthetic_cohort(store / "demo-data")
    echo(f"synthetic demo cohort written to {data}")
    preprocess = PreprocessConfig(image_size=DEMO_IMAGE_SIZE)
    with open(data / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    images = np.stack([decode_cell((data / r["image"]).read_bytes(), r["image"], preprocess) for r in rows])
    labels = np.array([r["label"] == "blast" for r in rows], dtype=int)
    config = ExperimentConfig.tiny(image_size=DEMO_IMAGE_SIZE, epochs=epochs)
    echo(f"training on {len(images)} synthetic cells ({labels.sum()} blast-like), "
         f"{DEMO_IMAGE_SIZE}x{DEMO_IMAGE_SIZE} input, backbone weights 'none'")
    result = run_experiment(images, labels, config)

    out = store / "demo-model"
    out.mkdir(parents=True, exist_ok=True)
    save_model(result.model, out / "model.keras")
    y_test = labels[result.split["test"]]
    (out / "learning_curves.png").write_bytes(figures.render_learning_curves(result.history))
    (out / "confusion_matrix.png").write_bytes(figures.render_confusion_matrix(result.metrics))
    (out / "roc_curve.png").write_bytes(figures.render_roc_curve(y_test, result.test_probabilities))
    (out / "f1_curve.png").write_bytes(
        figures.render_f1_curve(y_test, result.test_probabilities, config.threshold))
    (out / "metrics.json").write_text(json.dumps(result.metrics.to_dict(), indent=2))
    m = result.metrics
    echo(f"test cells {m.n}: accuracy {m.accuracy:.3f}, sensitivity {m.sensitivity:.3f}, "
         f"specificity {m.specificity:.3f}, F1 {m.f1:.3f}, ROC AUC {m.roc_auc:.3f}")
    return out
