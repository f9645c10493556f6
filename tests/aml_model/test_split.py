import numpy as np
import pytest

from aml_model.split import split_indices


def test_cell_split_is_stratified_complete_and_seeded():
    labels = np.array([0] * 60 + [1] * 40)
    split = split_indices(labels, seed=3)
    combined = np.concatenate(list(split.values()))
    assert sorted(combined.tolist()) == list(range(100))
    assert [len(split[k]) for k in ("train", "val", "test")] == [80, 10, 10]
    assert labels[split["test"]].sum() == 4  # 40% blasts in every part
    again = split_indices(labels, seed=3)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    other = split_indices(labels, seed=4)
    assert not np.array_equal(split["test"], other["test"])


def test_patient_split_keeps_each_patient_in_one_part():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"P{i:02d}" for i in range(20)], 10)
    labels = rng.integers(0, 2, groups.size)
    split = split_indices(labels, groups, seed=1)
    parts = [set(groups[split[k]]) for k in ("train", "val", "test")]
    assert (
        parts[0].isdisjoint(parts[1])
        and parts[0].isdisjoint(parts[2])
        and parts[1].isdisjoint(parts[2])
    )
    assert sum(len(p) for p in parts) == 20
    assert len(parts[0]) == pytest.approx(16, abs=1)


def test_patient_split_keeps_label_balance_and_refuses_too_few_patients():
    groups = np.repeat([f"P{i:02d}" for i in range(30)], 10)
    labels = np.repeat(np.arange(30) % 3 == 0, 10).astype(int)  # a third of the patients all-blast
    split = split_indices(labels, groups, seed=2)
    for part in ("val", "test"):
        assert 0 < labels[split[part]].mean() < 1, f"{part} holds both classes"
    with pytest.raises(ValueError, match="needs at least 10 patients, found 3"):
        split_indices(np.array([0, 1, 0]), np.array(["a", "b", "c"]))
