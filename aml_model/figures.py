"""The paper's evaluation figures (Fig. 3-6) rendered as PNG bytes with matplotlib."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # headless workers and CI have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay  # noqa: E402

from aml_model.evaluate import BinaryMetrics, f1_by_threshold  # noqa: E402

__all__ = [
    "render_confusion_matrix",
    "render_f1_curve",
    "render_learning_curves",
    "render_roc_curve",
]

CLASS_NAMES = ("normal", "blast")


def _png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def render_learning_curves(history: dict[str, list[float]]) -> bytes:
    """Training and validation accuracy and loss per epoch, side by side.

    Args:
        history: Keras history with "loss", "val_loss", "accuracy", "val_accuracy" lists.

    Returns:
        PNG bytes.
    """
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((acc_ax, "accuracy", "Accuracy"), (loss_ax, "loss", "Loss")):
        for prefix, label in (("", "training"), ("val_", "validation")):
            values = history.get(prefix + key)
            if values:
                ax.plot(np.arange(1, len(values) + 1), values, marker="o", ms=3, label=label)
        ax.set(title=f"{title} per epoch", xlabel="epoch", ylabel=key)
        ax.legend()
        ax.grid(alpha=0.3)
    return _png(fig)


def render_confusion_matrix(metrics: BinaryMetrics) -> bytes:
    """Confusion matrix of the test set at the metrics' threshold; PNG bytes."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay(metrics.confusion_matrix, display_labels=CLASS_NAMES).plot(
        ax=ax, cmap="Blues", colorbar=False, values_format="d"
    )
    ax.set_title(f"Confusion matrix (threshold {metrics.threshold:g})")
    return _png(fig)


def render_roc_curve(y_true: np.ndarray, y_prob: np.ndarray) -> bytes:
    """ROC curve with its AUC in the legend; PNG bytes."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    RocCurveDisplay.from_predictions(y_true, y_prob, ax=ax, name="blast vs normal", pos_label=1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set_title("ROC curve")
    return _png(fig)


def render_f1_curve(y_true: np.ndarray, y_prob: np.ndarray, threshold: float = 0.5) -> bytes:
    """F1 score against the decision threshold, the operating threshold marked; PNG bytes."""
    thresholds, scores = f1_by_threshold(y_true, y_prob)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(thresholds, scores)
    ax.axvline(threshold, linestyle="--", color="grey", label=f"threshold {threshold:g}")
    ax.set(title="F1 score vs threshold", xlabel="threshold", ylabel="F1", ylim=(0, 1.02))
    ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)
