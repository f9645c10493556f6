import numpy as np
import pytest
import zarr

from aml_model.train import feature_batches
from aml_model.zarr_rows import Rows, read_cells, read_cells_by_chunk


def zarr_rows(tmp_path, name, values, chunk=4):
    group = zarr.open_group(zarr.storage.LocalStore(str(tmp_path / name)), mode="w")
    array = group.create_array(
        "rows", shape=values.shape, chunks=(chunk, *values.shape[1:]), dtype=values.dtype
    )
    array[:] = values
    return array


class RecordingArray:
    """An array that takes only increasing index arrays, as Zarr's orthogonal selection, and
    records every read."""

    def __init__(self, values):
        self.values, self.shape, self.dtype, self.reads = values, values.shape, values.dtype, []

    def __len__(self):
        return len(self.values)

    def get_orthogonal_selection(self, selection):
        (indices,) = selection
        assert np.all(np.diff(indices) > 0), "increasing, no repeats"
        self.reads.append(np.array(indices))
        return self.values[indices]


def test_read_cells_returns_rows_in_any_order_with_repeats(tmp_path):
    values = np.arange(20 * 3, dtype=np.float32).reshape(20, 3)
    array = zarr_rows(tmp_path, "a.zarr", values)
    for indices in ([7, 2, 19, 2, 0], [0, 1, 2], [5], []):
        np.testing.assert_array_equal(read_cells(array, indices), values[indices].reshape(-1, 3))
    recording = RecordingArray(values)
    np.testing.assert_array_equal(read_cells(recording, [9, 3, 9, 1]), values[[9, 3, 9, 1]])
    np.testing.assert_array_equal(recording.reads[0], [1, 3, 9])


def test_read_cells_by_chunk_reads_each_chunk_once_in_order_given(tmp_path):
    values = np.arange(20 * 3, dtype=np.float32).reshape(20, 3)
    array = zarr_rows(tmp_path, "a.zarr", values, chunk=4)
    indices = [17, 2, 9, 3, 17, 0, 8]
    np.testing.assert_array_equal(read_cells_by_chunk(array, indices), values[indices])
    assert read_cells_by_chunk(array, []).shape == (0, 3)
    np.testing.assert_array_equal(read_cells_by_chunk(values, [5, 1]), values[[5, 1]])
    recording = RecordingArray(values)
    recording.chunks = (4, 3)
    np.testing.assert_array_equal(read_cells_by_chunk(recording, indices), values[indices])
    # Chunks 0 (rows 0-3), 2 (8-11) and 4 (16-19), each read once and alone.
    assert [r.tolist() for r in recording.reads] == [[0, 2, 3], [8, 9], [17]]


def test_rows_of_several_arrays_read_each_array_once(tmp_path):
    first = RecordingArray(np.arange(10, dtype=np.uint8).reshape(10, 1))
    second = RecordingArray(100 + np.arange(10, dtype=np.uint8).reshape(10, 1))
    rows = Rows.named(["b", "a", "b", "a"], [4, 7, 0, 2], {"a": first, "b": second}.__getitem__)
    assert rows.shape == (4, 1) and rows.dtype == np.uint8
    np.testing.assert_array_equal(rows[[0, 1, 2, 3]].ravel(), [104, 7, 100, 2])
    np.testing.assert_array_equal(rows.subset([3, 0])[[0, 1]].ravel(), [2, 104])
    assert [len(r) for r in first.reads] == [2, 1] and [len(r) for r in second.reads] == [2, 1]
    with pytest.raises(ValueError, match="row shapes"):
        Rows([first, RecordingArray(np.zeros((3, 2)))], [0, 1], [0, 0])


def test_feature_batches_read_one_batch_at_a_time_in_a_seeded_order():
    n, batch = 50, 8
    values = np.arange(n * 2, dtype=np.float16).reshape(n, 2)
    labels = np.arange(n) % 2
    weights = np.linspace(0.5, 1.5, n)
    recording = RecordingArray(values)
    dataset = feature_batches(Rows.of(recording, np.arange(n)), labels, batch, weights, seed=3)
    epochs = [[tuple(t.numpy() for t in b) for b in dataset] for _ in range(2)]
    # Never the whole array: one read per batch, of that batch's rows only.
    assert len(recording.reads) == 2 * -(-n // batch)
    assert max(len(r) for r in recording.reads) == batch
    for epoch in epochs:
        x = np.concatenate([b[0] for b in epoch])
        order = (x[:, 0] / 2).astype(int)
        assert sorted(order) == list(range(n)), "every row once per epoch"
        np.testing.assert_array_equal(np.concatenate([b[1] for b in epoch]).ravel(), labels[order])
        np.testing.assert_allclose(np.concatenate([b[2] for b in epoch]), weights[order], rtol=1e-6)
    first_order = np.concatenate([b[0] for b in epochs[0]])[:, 0]
    assert not np.array_equal(first_order, np.concatenate([b[0] for b in epochs[1]])[:, 0]), (
        "reshuffled each epoch"
    )
    again = feature_batches(values, labels, batch, weights, seed=3)
    np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in again])[:, 0], first_order)
    unlabelled = feature_batches(values, None, batch)
    np.testing.assert_array_equal(
        np.concatenate([b.numpy() for b in unlabelled]), values.astype(np.float32)
    )
