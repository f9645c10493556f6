"""The frozen-backbone feature cache: features/<backbone_id>.zarr keyed by everything that makes a view.

The backbone never changes during training, so its output for an image depends only on the
image, the preprocessing and the backbone weights. The cache keeps, per backbone:
``<id>.weights.h5`` (the exact weights, so every worker and the final model use the same ones),
``<id>.zarr/views`` (float16 rows of `(h, w, c)` features, or `(2c,)` pooled, one row a chunk,
so a shuffled training batch reads its rows and nothing else) and ``<id>.index.parquet``
(sha256, view, augmentation, row), the index being written last: rows it does not list are
invisible, so a crash mid-embedding leaves nothing a reader could take for complete.

A row is named by the cell's sha256, the view number (0: the cell as it is) and the view's
augmentation key (the augmentation settings and the seed, :func:`aml_model.views.augmentation_key`);
its random draws come from a seed derived from that name, and the backbone runs on batches padded
to one size. A view is therefore the same bits whichever run, order or worker computed it, and a
new seed or augmentation embeds new views instead of reusing old ones. An index from before
these keys (no ``augmentation`` column) is ignored: its rows are embedded again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import threading
from collections.abc import Callable

import numpy as np
import pandas as pd

from aml_model.config import FEATURE_LAYERS, AugmentConfig, ExperimentConfig, ModelConfig
from aml_model.views import augmentation_key, view_seed
from aml_model.zarr_rows import Rows, read_cells
from tasks.devices import model_tasks
from tasks.retry import store_task
from tasks.store import Store, join
from tasks.weights import fetch_backbone_weights

__all__ = [
    "ROWS_PER_TASK",
    "FeatureCache",
    "embed_missing",
    "embed_shard",
    "prepare_backbone",
    "prepare_backbone_task",
]

#: Rows one embedding task computes and writes.
ROWS_PER_TASK = 64
#: The backbone sees batches of exactly this many images (the last one padded): a row's
#: features then do not depend on how many other rows its task had.
EMBED_BATCH = 32
ARRAY = "views"
KEY = ["sha256", "view", "augmentation"]
#: Per worker process: kind -> (key, object), the folded backbone and the view augmenter.
_WORKER: dict[str, tuple[object, object]] = {}
_LOCK = threading.Lock()


class FeatureCache:
    """Where one backbone's cache lives in the store (``store``: the run store, a :class:`Store`)."""

    def __init__(self, store: Store, backbone_id: str) -> None:
        self.store = store
        self.root = store.features
        self.backbone_id = backbone_id
        self.weights = join(self.root, f"{backbone_id}.weights.h5")
        self.array_url = join(self.root, f"{backbone_id}.zarr")
        self.index_url = join(self.root, f"{backbone_id}.index.parquet")

    def read_index(self) -> pd.DataFrame:
        """sha256, view, augmentation and row of every committed row."""
        if self.store.exists(self.index_url):
            index = self.store.read_table(self.index_url)
            if set(KEY) <= set(index.columns):
                return index
        return pd.DataFrame(
            {
                "sha256": pd.Series(dtype=str),
                "view": pd.Series(dtype="int64"),
                "augmentation": pd.Series(dtype=str),
                "row": pd.Series(dtype="int64"),
            }
        )

    def allocate(self, n_new: int, feature_shape: tuple[int, ...]) -> int:
        """Grow the array by ``n_new`` rows; returns the first new row."""
        import zarr

        group = zarr.open_group(self.store.zarr_store(self.array_url, read_only=False), mode="a")
        if ARRAY not in group:
            group.create_array(
                ARRAY,
                shape=(0, *feature_shape),
                chunks=(1, *feature_shape),
                dtype="float16",
                fill_value=0,
                compressors=[zarr.codecs.BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")],
            )
        array = group[ARRAY]
        start = array.shape[0]
        array.resize((start + n_new, *feature_shape))
        return start

    def array(self, read_only: bool = True):
        """The `(rows, h, w, c)` float16 Zarr array, unread."""
        return self.store.open_cells_array(self.array_url, name=ARRAY, read_only=read_only)

    def rows(self, rows: np.ndarray) -> Rows:
        """The given rows, to be read a batch at a time (:func:`aml_model.train.feature_batches`)."""
        return Rows.of(self.array(), rows)

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Features of the given rows as stored (float16), in the order given."""
        return read_cells(self.array(), rows)


def embed_missing(
    cache: FeatureCache,
    needed: pd.DataFrame,
    feature_shape: tuple[int, ...],
    config: ExperimentConfig,
    map_shards: Callable[[list[tuple]], list[int]] | None = None,
) -> tuple[np.ndarray, int]:
    """Embed the views of ``needed`` that the cache lacks, and commit them to the index.

    Args:
        cache: the backbone's cache.
        needed: one row per view wanted: sha256, view, cells_zarr, zarr_index.
        config: the model's input size and normalisation, the augmentation and the seed.
        map_shards: runs :func:`embed_shard` on each tuple of arguments and returns the row
            counts; by default the shards are submitted to the flow's task runner (Dask workers).

    Returns:
        (the cache row of each row of ``needed``, in its order; the number of rows embedded).
    """
    if map_shards is None:

        def map_shards(calls):
            with model_tasks():
                futures = [embed_shard.submit(*call) for call in calls]
            return [future.result() for future in futures]

    augment, seed = config.train.augment, config.train.seed
    keyed = needed.assign(
        augmentation=[augmentation_key(augment, seed, view) for view in needed["view"]]
    )
    index = cache.read_index()
    known = keyed.merge(index, on=KEY, how="left")
    missing = (
        known[known["row"].isna()].drop_duplicates(KEY).drop(columns="row").reset_index(drop=True)
    )
    if len(missing):
        first = cache.allocate(len(missing), feature_shape)
        items = [
            (
                r.cells_zarr,
                int(r.zarr_index),
                view_seed(r.sha256, r.view, r.augmentation) if r.view else None,
            )
            for r in missing.itertuples()
        ]
        calls = [
            (
                items[s : s + ROWS_PER_TASK],
                first + s,
                cache.store,
                cache.backbone_id,
                config.model,
                augment,
            )
            for s in range(0, len(items), ROWS_PER_TASK)
        ]
        done = sum(map_shards(calls))
        if done != len(missing):
            message = f"embedding wrote {done} rows, expected {len(missing)}"
            raise RuntimeError(message)
        added = missing[KEY].assign(row=np.arange(first, first + len(missing)))
        index = pd.concat([index, added], ignore_index=True)
        # The index is the commit point: rows become visible only once all of them are written.
        cache.store.write_table(index, cache.index_url)
    rows = keyed.merge(index, on=KEY, how="left")["row"].to_numpy(np.int64)
    return rows, len(missing)


def prepare_backbone(config: ModelConfig, store: Store, seed: int) -> tuple[str, str, tuple]:
    """Build the configured backbone once, and store its exact weights under their hash.

    A weights file ``config.backbone_weights`` names on another filesystem (``s3://...``) is
    fetched into the machine's cache first (:func:`tasks.weights.fetch_backbone_weights`).

    Returns:
        (backbone_id, weights URL in the store, feature shape: `(h, w, c)`, or `(2c,)` pooled).
    """
    from aml_model.architecture import cut_backbone, seed_weights, whole_backbone

    # The whole network's weights are stored, as build_backbone reads them for any feature layer;
    # seed_weights draws a cut network's weights as the first layers of the whole one's.
    backbone = whole_backbone(config, fetch_backbone_weights(config, store))
    if config.backbone_weights.lower() == "none":
        seed_weights(backbone, seed)  # random weights, the same for every run with this seed
    # The weights' hash does not see the scale and colour normalisation before the backbone, nor
    # the feature layer and pooling after it: all are part of what a feature means.
    layer = "none" if config.feature_layer == FEATURE_LAYERS[-1] else config.feature_layer
    steps = (config.scale_normalisation, config.stain_normalisation, layer, config.feature_pooling)
    variant = "".join(f"-{step}" for step in steps if step != "none")
    with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, "backbone.weights.h5")
        backbone.save_weights(local)
        digest = hashlib.sha256()
        for weight in backbone.weights:
            digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
        backbone_id = f"resnet50-{config.image_size}px-{digest.hexdigest()[:16]}{variant}"
        cache = FeatureCache(store, backbone_id)
        if not store.exists(cache.weights):
            with open(local, "rb") as handle:
                store.write_bytes(cache.weights, handle.read())
    return (
        backbone_id,
        cache.weights,
        tuple(int(d) for d in cut_backbone(backbone, config).output.shape[1:]),
    )


#: :func:`prepare_backbone` as a task, so that a flow builds the backbone on a worker.
prepare_backbone_task = store_task("prepare-backbone")(prepare_backbone)


def _per_worker(kind: str, key, build: Callable[[], object]):
    """The object of this kind for ``key``, built once per worker process (one kept per kind)."""
    with _LOCK:
        held = _WORKER.get(kind)
        if held is None or held[0] != key:
            _WORKER.pop(kind, None)
            _WORKER[kind] = (key, build())
        return _WORKER[kind][1]


def _build_backbone(backbone_id: str, weights_url: str, model: ModelConfig, store: Store):
    from aml_model.architecture import build_backbone
    from aml_model.inference import fold_batch_norm

    # The cache's weights are named by their hash (the backbone id): a cached copy of that name is theirs.
    local = store.local_copy(weights_url, f"{backbone_id}.weights.h5")
    stored = dataclasses.replace(model, backbone_weights=local, backbone_weights_sha256=None)
    # The folded form computes the same features (within float rounding) faster.
    return fold_batch_norm(build_backbone(stored))


@store_task("embed-shard")
def embed_shard(
    items: list[tuple[str, int, int | None]],
    first_row: int,
    store: Store,
    backbone_id: str,
    model: ModelConfig,
    augment: AugmentConfig,
) -> int:
    """Compute backbone features of cells and write them to rows [first_row, first_row + n).

    Args:
        items: (cells.zarr URL, zarr index, view seed) per row; a seed of None is the cell as
            it is (view 0), any other an augmented view drawn with that seed
            (:class:`aml_model.views.ViewAugmenter`).
        first_row: the first row this task owns (no other task writes there).
        store: the run store holding ``features/`` (the cells' stores are reached with its options).
        model: the model's input size, input normalisation (applied before the backbone as the
            model applies it), feature layer and pooling; its weights are the cache's.

    Returns:
        The number of rows embedded.
    """
    from aml_model.architecture import input_normalisation
    from aml_model.preprocess import normalise_for_resnet50

    cache = FeatureCache(store, backbone_id)
    backbone = _per_worker(
        "backbone", backbone_id, lambda: _build_backbone(backbone_id, cache.weights, model, store)
    )
    image_size = model.image_size
    cells = Rows.named(
        [url for url, _, _ in items], [index for _, index, _ in items], store.open_cells_array
    )
    # Padded to whole backbone batches: the padding rows are computed and dropped.
    images = np.zeros(
        (-(-len(items) // EMBED_BATCH) * EMBED_BATCH, image_size, image_size, 3), np.float32
    )
    images[: len(items)] = cells[np.arange(len(items))]
    if any(seed is not None for _, _, seed in items):
        from aml_model.views import ViewAugmenter

        augmenter = _per_worker("augmenter", augment, lambda: ViewAugmenter(augment))
        for position, (_, _, seed) in enumerate(items):
            if seed is not None:
                images[position] = augmenter(images[position], seed)
    inputs = normalise_for_resnet50(images)
    for layer in input_normalisation(model):
        inputs = layer(inputs)
    features = backbone.predict(np.asarray(inputs), batch_size=EMBED_BATCH, verbose=0)[: len(items)]
    cache.array(read_only=False)[first_row : first_row + len(items)] = features.astype(np.float16)
    return len(items)
