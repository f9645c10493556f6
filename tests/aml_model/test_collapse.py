import numpy as np
import pytest

from aml_model.collapse import check_collapse, require_not_collapsed
from aml_model.errors import TrainingCollapsedError

Y = np.array([0, 1] * 20)


def test_a_constant_predictor_is_collapsed():
    check = check_collapse(Y, np.full(Y.shape, 0.5))
    assert check.collapsed and "hardly vary" in check.reason and check.spread == 0


def test_one_predicted_class_with_a_good_ranking_is_miscalibrated_not_collapsed():
    p = np.where(Y == 1, 0.3, 0.1) + np.linspace(0, 0.01, Y.size)
    check = check_collapse(Y, p)
    assert check.val_auc == 1.0 and not check.collapsed and check.predicted_blast_fraction == 0.0


def test_a_ranking_no_better_than_a_guess_is_collapsed():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, Y.size)
    p[Y == 1] = np.sort(p[Y == 1])  # keep it random with respect to the labels
    check = check_collapse(Y, p)
    assert check.val_auc <= 0.6 and check.collapsed and "ROC AUC" in check.reason


def test_a_working_model_passes():
    p = np.where(Y == 1, 0.8, 0.2) + np.random.default_rng(1).normal(0, 0.05, Y.size)
    check = check_collapse(Y, p)
    assert (
        not check.collapsed
        and check.val_auc > 0.99
        and check.predicted_blast_fraction == pytest.approx(0.5)
    )
    assert require_not_collapsed([check_collapse(Y, np.full(Y.shape, 0.2)), check]) is check


def test_every_attempt_collapsed_is_an_error_naming_each():
    checks = [check_collapse(Y, np.full(Y.shape, 0.2)), check_collapse(Y, np.full(Y.shape, 0.9))]
    with pytest.raises(
        TrainingCollapsedError,
        match="all 2 initialisations.*attempt 1.*attempt 2.*no model was registered",
    ):
        require_not_collapsed(checks)


def test_attempt_seeds_differ_and_stay_valid_for_numpy():
    from aml_model.collapse import MAX_ATTEMPTS, attempt_seed

    seeds = [attempt_seed(2**32 - 1, attempt) for attempt in range(MAX_ATTEMPTS)]
    assert seeds[0] == 2**32 - 1 and len(set(seeds)) == MAX_ATTEMPTS
    for seed in seeds:
        np.random.seed(seed)  # raises for seeds of 2**32 and above
