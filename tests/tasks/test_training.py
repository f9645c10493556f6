import dataclasses
from pathlib import Path

import numpy as np
import pytest

from aml_model.config import ExperimentConfig
from tasks.features import FeatureCache, prepare_backbone
from tasks.store import Store
from tasks.training import cell_rows, load_cells, predict_cells, train_plain
from tests.tasks.synthetic_store import write_runs


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    return write_runs(tmp_path_factory.mktemp("cells"), cells_per_run=20)


def cells_store(cells) -> Store:
    """The local store the synthetic runs were written in (``<root>/runs/<run>/cells.zarr``)."""
    return Store(str(Path(cells["cells_zarr"].iloc[0]).parents[2]))


def test_cells_of_several_runs_are_read_in_the_frame_order(cells):
    arrays = {
        url: cells_store(cells).open_cells_array(url)[:] for url in cells["cells_zarr"].unique()
    }
    shuffled = cells.sample(frac=1, random_state=0).reset_index(drop=True)
    expected = np.stack([arrays[r.cells_zarr][r.zarr_index] for r in shuffled.itertuples()])
    np.testing.assert_array_equal(load_cells(shuffled, cells_store(cells)), expected)
    rows = cell_rows(shuffled, cells_store(cells))
    assert rows.shape == expected.shape and rows.dtype == np.uint8
    np.testing.assert_array_equal(rows.subset([5, 1])[[0, 1]], expected[[5, 1]])
    assert load_cells(shuffled.iloc[:0], cells_store(cells)).shape[0] == 0


class Recording:
    """A cells array that records how many rows each read asks for."""

    def __init__(self, array, reads):
        self.array, self.reads, self.shape, self.dtype = array, reads, array.shape, array.dtype

    def get_orthogonal_selection(self, selection):
        self.reads.append(len(selection[0]))
        return self.array.get_orthogonal_selection(selection)


def test_the_plain_path_reads_cells_from_the_store_a_batch_at_a_time(cells, tmp_path, monkeypatch):
    tiny = ExperimentConfig.tiny(image_size=32, epochs=2)
    config = dataclasses.replace(tiny, train=dataclasses.replace(tiny.train, batch_size=8))
    store = str(tmp_path / "store")
    backbone_id, _, _ = prepare_backbone(config.model, Store(store), config.train.seed)
    reads = []
    opened = Store.open_cells_array
    monkeypatch.setattr(
        Store, "open_cells_array", lambda *a, **k: Recording(opened(*a, **k), reads)
    )

    y = (cells["label"] == "blast").to_numpy(int)
    order = np.random.default_rng(0).permutation(len(cells))
    split = {"train": order[:24], "val": order[24:32], "test": order[32:]}
    trained = train_plain.fn(FeatureCache(Store(store), backbone_id), config, cells, y, split)
    assert (
        len(trained.history["loss"]) == 2
        and trained.p_test.shape == (8,)
        and len(trained.attempts) >= 1
    )
    # Training batches of 8 from two runs, validation and test in batches of up to 64: no read
    # ever holds more than one batch, let alone all 40 cells.
    assert max(reads) <= 8
    assert len(reads) >= 2 * (24 // 8)
    # The task hands back the model staged in the store, not the Keras object: the staged file
    # scores the test cells as training did, and is not yet resolvable (no card).
    from aml_model.io import load_model
    from tasks.registry import ModelNotFoundError, resolve_model

    assert (
        trained.ref.url == f"{store}/models/{trained.ref.version}/model.keras"
        and trained.ref.image_size == 32
    )
    model = load_model(trained.ref.url, compile=False)
    test_cells = load_cells(cells.iloc[split["test"]], Store(store))
    np.testing.assert_allclose(trained.p_test, predict_cells(model, test_cells), atol=1e-6)
    with pytest.raises(ModelNotFoundError, match="not completely registered"):
        resolve_model(trained.ref.version, Store(store))


def test_the_reduced_precisions_are_checked_on_test_then_validation_then_training_cells(
    monkeypatch,
):
    import pandas as pd

    import tasks.training as training

    cells = pd.DataFrame({"cell_id": [f"c{i}" for i in range(10)]})
    split = {
        "train": np.array([0, 1, 2, 3, 4, 5]),
        "val": np.array([6, 7]),
        "test": np.array([8, 9]),
    }
    chosen = training.agreement_cells(cells, split)["cell_id"].tolist()
    assert chosen == ["c8", "c9", "c6", "c7", "c0", "c1", "c2", "c3", "c4", "c5"]
    monkeypatch.setattr(training, "AGREEMENT_CELLS", 3)
    assert training.agreement_cells(cells, split)["cell_id"].tolist() == ["c8", "c9", "c6"]
