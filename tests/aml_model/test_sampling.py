import numpy as np

from aml_model.sampling import balanced_weights, group_counts


def test_each_label_weighs_half_and_sources_share_a_label_equally():
    sources = np.array(["lmu"] * 10 + ["lmu"] * 10 + ["pbc"] * 60)
    labels = np.array([1] * 10 + [0] * 10 + [0] * 60)
    weights = balanced_weights(sources, labels)
    assert weights.mean() == np.float32(1.0) or abs(weights.mean() - 1) < 1e-6
    total = weights.sum()
    assert abs(weights[labels == 1].sum() / total - 0.5) < 1e-6
    assert (
        abs(weights[(sources == "lmu") & (labels == 0)].sum() - weights[sources == "pbc"].sum())
        < 1e-4
    )
    # Within a group every cell weighs the same.
    assert np.ptp(weights[sources == "pbc"]) == 0


def test_one_balanced_source_gives_equal_weights():
    weights = balanced_weights(np.array(["a"] * 6), np.array([0, 1] * 3))
    np.testing.assert_allclose(weights, 1.0)


def test_group_counts():
    assert group_counts(np.array(["a", "a", "b"]), np.array([1, 0, 0])) == {
        "a": {"blast": 1, "normal": 1},
        "b": {"blast": 0, "normal": 1},
    }
