import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from aml_model import figures
from aml_model.evaluate import compute_metrics, confident_errors, f1_by_threshold

# Worked by hand: at threshold 0.5 the predictions are 1 1 0 1 | 0 0 1 0 1 0,
# so tp=3, fn=1, fp=2, tn=4; of the 24 (blast, normal) pairs 21 are ranked correctly.
Y_TRUE = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
Y_PROB = np.array([0.9, 0.8, 0.4, 0.6, 0.1, 0.2, 0.7, 0.3, 0.55, 0.05])


def test_metrics_match_hand_computation():
    m = compute_metrics(Y_TRUE, Y_PROB, threshold=0.5)
    assert (m.tp, m.fn, m.fp, m.tn) == (3, 1, 2, 4)
    assert m.accuracy == pytest.approx(7 / 10)
    assert m.sensitivity == pytest.approx(3 / 4)
    assert m.specificity == pytest.approx(4 / 6)
    assert m.precision == pytest.approx(3 / 5)
    assert m.f1 == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75))
    assert m.roc_auc == pytest.approx(21 / 24)
    np.testing.assert_array_equal(m.confusion_matrix, [[4, 2], [1, 3]])


def test_threshold_is_inclusive():
    m = compute_metrics([1, 0], [0.5, 0.49], threshold=0.5)
    assert (m.tp, m.tn) == (1, 1)


def test_single_class_has_undefined_auc_but_other_metrics():
    m = compute_metrics([0, 0, 0], [0.1, 0.7, 0.2])
    assert np.isnan(m.roc_auc)
    assert m.specificity == pytest.approx(2 / 3) and m.sensitivity == 0


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="3 labels but 2 probabilities"):
        compute_metrics([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        compute_metrics([0, 2], [0.1, 0.2])


def test_f1_curve_matches_pointwise_metrics():
    thresholds, scores = f1_by_threshold(Y_TRUE, Y_PROB, np.array([0.0, 0.5, 0.95]))
    assert scores[0] == pytest.approx(2 * 0.4 / 1.4)  # everything blast: precision 0.4, recall 1
    assert scores[1] == pytest.approx(compute_metrics(Y_TRUE, Y_PROB, 0.5).f1)
    assert scores[2] == 0


def assert_png(data: bytes) -> None:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and min(image.size) > 100
        assert np.asarray(image.convert("L")).std() > 1, "figure is blank"


def test_all_four_figures_are_valid_pngs():
    history = {
        "loss": [0.7, 0.5, 0.4],
        "val_loss": [0.72, 0.6, 0.62],
        "accuracy": [0.5, 0.7, 0.8],
        "val_accuracy": [0.5, 0.65, 0.6],
    }
    m = compute_metrics(Y_TRUE, Y_PROB)
    for data in (
        figures.render_learning_curves(history),
        figures.render_confusion_matrix(m),
        figures.render_roc_curve(Y_TRUE, Y_PROB),
        figures.render_f1_curve(Y_TRUE, Y_PROB, 0.5),
    ):
        assert_png(data)


def test_confident_errors_name_only_misclassified_labelled_cells_most_confident_first():
    cells = pd.DataFrame(
        {
            "cell_id": list("abcdefg"),
            "label": ["blast", "blast", "normal", "normal", "normal", None, "blast"],
        }
    )
    probabilities = np.array([0.9, 0.2, 0.99, 0.5, 0.1, 0.99, 0.49])
    errors = confident_errors(cells, probabilities, threshold=0.5)
    # c (normal at 0.99) before b (blast at 0.2) before g and d, the two at the threshold's edge;
    # f is unlabelled, a and e are right.
    assert errors["cell_id"].tolist() == ["c", "b", "g", "d"]
    assert errors["probability"].tolist() == [0.99, 0.2, 0.49, 0.5]
    assert confident_errors(cells, probabilities, threshold=0.5, n=2)["cell_id"].tolist() == [
        "c",
        "b",
    ]
    assert confident_errors(cells, np.where(cells["label"] == "blast", 1.0, 0.0), 0.5).empty
    with pytest.raises(ValueError, match="7 cells but 6 probabilities"):
        confident_errors(cells, probabilities[:6], 0.5)
