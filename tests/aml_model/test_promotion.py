from aml_model.evaluate import compute_metrics
from aml_model.promotion import decide_promotion

Y = [1, 1, 1, 0, 0, 0]
GOOD = compute_metrics(Y, [0.9, 0.8, 0.7, 0.2, 0.1, 0.3])  # AUC 1, sensitivity 1
WORSE = compute_metrics(Y, [0.9, 0.4, 0.7, 0.6, 0.1, 0.3])  # AUC 8/9, sensitivity 2/3


def test_first_model_is_promoted():
    assert decide_promotion({}).promote


def test_equal_or_better_is_promoted_and_worse_is_kept():
    assert decide_promotion({"own": (GOOD, GOOD)}).promote
    assert decide_promotion({"own": (GOOD, WORSE), "champion's": (GOOD, GOOD)}).promote
    decision = decide_promotion({"own": (WORSE, GOOD)})
    assert not decision.promote
    assert "AUC 0.8889 < champion 1.0000" in decision.reason and "sensitivity" in decision.reason


def test_auc_margin_is_tolerated_but_not_exceeded():
    slightly = compute_metrics(
        Y, [0.9, 0.8, 0.7, 0.75, 0.1, 0.3]
    )  # AUC 8/9, sensitivity 1 (0.75 outranks 0.7)
    assert decide_promotion({"own": (slightly, GOOD)}, margin=0.12).promote
    assert not decide_promotion({"own": (slightly, GOOD)}, margin=0.1).promote
