import dataclasses
import logging
import re

import numpy as np
import pandas as pd
import pytest

from aml_model.config import ExperimentConfig
from tasks import features
from tasks.features import FeatureCache, embed_missing, embed_shard, prepare_backbone
from tasks.store import Store
from tasks.training import fit_head
from tests.tasks.synthetic_store import write_runs

VIEWS = 2


def in_process(calls):
    """Run the embedding shards here, one after the other, instead of on Dask workers."""
    return [embed_shard.fn(*call) for call in calls]


def new_run():
    """Forget the backbone and augmenter this process built, as a fresh worker would."""
    features._WORKER.clear()


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    return write_runs(tmp_path_factory.mktemp("cells"), cells_per_run=24)


@pytest.fixture(scope="module")
def config():
    tiny = ExperimentConfig.tiny(image_size=32, epochs=4)
    return dataclasses.replace(
        tiny, train=dataclasses.replace(tiny.train, early_stopping_patience=4)
    )


def wanted(cells, train, val):
    """The rows retrain asks for: every view of the training cells, the validation cells as they are."""
    views = [cells.iloc[train].assign(view=v) for v in range(VIEWS + 1)]
    return pd.concat([*views, cells.iloc[val].assign(view=0)], ignore_index=True)


def test_fit_head_logs_its_epochs_and_the_restored_one(cells, config, tmp_path, caplog):
    train, val = np.arange(16), np.arange(16, 24)
    store = str(tmp_path / "store")
    new_run()
    backbone_id, _, shape = prepare_backbone(config.model, Store(store), config.train.seed)
    cache = FeatureCache(Store(store), backbone_id)
    rows, _ = embed_missing(cache, wanted(cells, train, val), shape, config, map_shards=in_process)
    with caplog.at_level(logging.INFO, logger="tasks.training"):
        train_from_cache(cache, config, cells, rows, train, val)
    lines = [record.getMessage() for record in caplog.records if record.name == "tasks.training"]
    # Four epochs take well under the throttle's interval: the first line and the last one show.
    assert re.fullmatch(
        r"epoch 1/4: loss \d+\.\d{4}, val_loss \d+\.\d{4}, val AUC (\d\.\d{3}|nan)", lines[0]
    ), lines
    assert lines[1].startswith("epoch 4/4: ") and len(lines) == 3
    assert re.fullmatch(
        r"trained 4 epochs; best epoch [1-4]: val_loss \d+\.\d{4}, val AUC .+", lines[2]
    )


def train_from_cache(cache, config, cells, rows, train, val):
    y = (cells["label"] == "blast").to_numpy(int)
    n_train = len(train) * (VIEWS + 1)
    head, history, best, attempts = fit_head(
        cache,
        config,
        (1, 1, 2048),
        rows[:n_train],
        np.tile(y[train], VIEWS + 1),
        rows[n_train:],
        y[val],
    )
    return head


def test_a_cold_and_a_warm_cache_train_bit_identical_heads(cells, config, tmp_path):
    order = np.random.default_rng(0).permutation(len(cells))
    train, val, rest = order[:32], order[32:40], order[40:]
    needed = wanted(cells, train, val)

    cold_store = str(tmp_path / "cold")
    new_run()
    backbone_id, _, shape = prepare_backbone(config.model, Store(cold_store), config.train.seed)
    assert shape == (1, 1, 2048)
    cold = FeatureCache(Store(cold_store), backbone_id)
    cold_rows, embedded = embed_missing(cold, needed, shape, config, map_shards=in_process)
    assert embedded == len(needed)

    # Another store, filled by an earlier run in another order, with other cells among them,
    # in shards of other sizes: every wanted view sits elsewhere in the array, beside other rows.
    warm_store = str(tmp_path / "warm")
    new_run()
    assert prepare_backbone(config.model, Store(warm_store), config.train.seed)[0] == backbone_id
    warm = FeatureCache(Store(warm_store), backbone_id)
    earlier = pd.concat([wanted(cells, rest, []), needed], ignore_index=True).iloc[::-1]
    for part in np.array_split(earlier.index.to_numpy(), 3):
        embed_missing(warm, earlier.loc[part], shape, config, map_shards=in_process)
    new_run()
    warm_rows, embedded = embed_missing(warm, needed, shape, config, map_shards=in_process)
    assert embedded == 0, "everything wanted is cached"
    assert not np.array_equal(warm_rows, cold_rows)
    np.testing.assert_array_equal(
        warm.read_rows(warm_rows).view(np.uint16), cold.read_rows(cold_rows).view(np.uint16)
    )

    cold_head = train_from_cache(cold, config, cells, cold_rows, train, val)
    warm_head = train_from_cache(warm, config, cells, warm_rows, train, val)
    for a, b in zip(cold_head.get_weights(), warm_head.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(
        cold_head.get_weights()[0],
        train_from_cache(
            cold, config, cells, cold_rows[::-1].copy(), train[::-1], val
        ).get_weights()[0],
    ), "the weights depend on the rows"


def test_a_new_seed_or_augmentation_embeds_new_views_and_reuses_the_cells_as_they_are(
    cells, config, tmp_path
):
    train, val = np.arange(12), np.arange(12, 16)
    needed = wanted(cells, train, val)
    store = str(tmp_path / "store")
    new_run()
    backbone_id, _, shape = prepare_backbone(config.model, Store(store), config.train.seed)
    cache = FeatureCache(Store(store), backbone_id)
    rows, embedded = embed_missing(cache, needed, shape, config, map_shards=in_process)
    assert embedded == len(needed)
    augmented = (needed["view"] > 0).to_numpy()

    other_seed = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=1))
    seed_rows, embedded = embed_missing(cache, needed, shape, other_seed, map_shards=in_process)
    assert embedded == augmented.sum()
    np.testing.assert_array_equal(seed_rows[~augmented], rows[~augmented])
    assert not np.array_equal(
        cache.read_rows(seed_rows[augmented]), cache.read_rows(rows[augmented])
    )

    rotation = dataclasses.replace(config.train.augment, rotation_degrees=5.0)
    other_augment = dataclasses.replace(
        config, train=dataclasses.replace(config.train, augment=rotation)
    )
    assert (
        embed_missing(cache, needed, shape, other_augment, map_shards=in_process)[1]
        == augmented.sum()
    )
    again, embedded = embed_missing(cache, needed, shape, config, map_shards=in_process)
    assert embedded == 0
    np.testing.assert_array_equal(again, rows)
    index = cache.read_index()
    assert len(index) == len(needed) + 2 * augmented.sum()
    assert set(index.loc[index["view"] == 0, "augmentation"]) == {""}
    assert index["augmentation"].nunique() == 4


def test_an_index_from_before_view_keys_is_ignored(cells, config, tmp_path):
    store = str(tmp_path / "store")
    new_run()
    backbone_id, _, shape = prepare_backbone(config.model, Store(store), config.train.seed)
    cache = FeatureCache(Store(store), backbone_id)
    old = pd.DataFrame({"sha256": cells["sha256"][:4], "view": 1, "row": np.arange(4)})
    cache.store.write_table(old, cache.index_url)
    assert cache.read_index().empty
    rows, embedded = embed_missing(
        cache, cells.iloc[:4].assign(view=1), shape, config, map_shards=in_process
    )
    assert embedded == 4 and list(rows) == [0, 1, 2, 3]
