"""The frozen-backbone feature cache: features/<backbone_id>.zarr keyed by image sha256 and view.

The backbone never changes during training, so its output for an image depends only on the
image, the preprocessing and the backbone weights. The cache keeps, per backbone:
``<id>.weights.h5`` (the exact weights, so every worker and the final model use the same ones),
``<id>.zarr/features`` (float16 rows of `(h, w, c)` features, 64 rows a chunk) and
``<id>.index.parquet`` (sha256, view, row), the index being written last: rows it does not list
are invisible, so a crash mid-embedding leaves nothing a reader could take for complete.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from aml_model.config import AugmentConfig, ModelConfig
from tasks import storage
from tasks.retry import retry_transient_errors

__all__ = ["FeatureCache", "embed_shard", "prepare_backbone"]

ROWS_PER_CHUNK = 64
_BACKBONES: dict[str, object] = {}
_LOCK = threading.Lock()


class FeatureCache:
    """Where one backbone's cache lives in the store."""

    def __init__(self, store: str, backbone_id: str, storage_options: dict | None = None) -> None:
        self.root = storage.join(store, "features")
        self.backbone_id = backbone_id
        self.options = storage_options or {}
        self.weights = storage.join(self.root, f"{backbone_id}.weights.h5")
        self.array_url = storage.join(self.root, f"{backbone_id}.zarr")
        self.index_url = storage.join(self.root, f"{backbone_id}.index.parquet")

    def read_index(self) -> pd.DataFrame:
        if storage.exists(self.index_url, self.options):
            return storage.read_table(self.index_url, self.options)
        return pd.DataFrame({"sha256": pd.Series(dtype=str), "view": pd.Series(dtype="int64"),
                             "row": pd.Series(dtype="int64")})

    def allocate(self, n_new: int, feature_shape: tuple[int, ...]) -> int:
        """Grow the array by ``n_new`` rows starting on a fresh chunk; returns the first new row."""
        import zarr

        group = zarr.open_group(storage.zarr_store(self.array_url, self.options, read_only=False), mode="a")
        if "features" not in group:
            group.create_array("features", shape=(0, *feature_shape), chunks=(ROWS_PER_CHUNK, *feature_shape),
                               dtype="float16", fill_value=0)
        array = group["features"]
        start = -(-array.shape[0] // ROWS_PER_CHUNK) * ROWS_PER_CHUNK
        array.resize((start + n_new, *feature_shape))
        return start

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Features of the given rows as stored (float16), in the order given."""
        array = storage.open_cells_array(self.array_url, self.options, name="features")
        order = np.argsort(rows)
        out = np.empty((len(rows), *array.shape[1:]), np.float16)
        out[order] = array.get_orthogonal_selection((np.asarray(rows)[order],))
        return out


def prepare_backbone(config: ModelConfig, store: str, storage_options: dict | None, seed: int) -> tuple[str, str, tuple]:
    """Build the configured backbone once, and store its exact weights under their hash.

    Returns:
        (backbone_id, weights URL in the store, feature shape `(h, w, c)`).
    """
    from aml_model.architecture import build_backbone, seed_weights

    backbone = build_backbone(config, storage_options)
    if config.backbone_weights.lower() == "none":
        seed_weights(backbone, seed)  # random weights, the same for every run with this seed
    # Scale and colour normalisation run before the backbone: they are part of what a feature means.
    normalisation = "".join(f"-{mode}" for mode in (config.scale_normalisation, config.stain_normalisation) if mode != "none")
    with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, "backbone.weights.h5")
        backbone.save_weights(local)
        digest = hashlib.sha256()
        for weight in backbone.weights:
            digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
        backbone_id = f"resnet50-{config.image_size}px-{digest.hexdigest()[:16]}{normalisation}"
        cache = FeatureCache(store, backbone_id, storage_options)
        if not storage.exists(cache.weights, storage_options):
            with open(local, "rb") as handle:
                storage.write_bytes(cache.weights, handle.read(), storage_options)
    return backbone_id, cache.weights, tuple(int(d) for d in backbone.output.shape[1:])


def _worker_backbone(backbone_id: str, weights_url: str, image_size: int, storage_options: dict):
    with _LOCK:
        if backbone_id not in _BACKBONES:
            from aml_model.architecture import build_backbone
            from aml_model.inference import fold_batch_norm

            local = storage.local_copy(weights_url, storage_options, f"{backbone_id}.weights.h5")
            _BACKBONES.clear()
            # The folded form computes the same features (within float rounding) faster.
            backbone = build_backbone(ModelConfig(image_size=image_size, backbone_weights=local))
            _BACKBONES[backbone_id] = fold_batch_norm(backbone)
        return _BACKBONES[backbone_id]


@task(name="embed-shard", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
      retry_condition_fn=retry_transient_errors)
def embed_shard(
    items: list[tuple[str, int, int]],
    first_row: int,
    store: str,
    backbone_id: str,
    image_size: int,
    augment: AugmentConfig,
    seed: int,
    storage_options: dict,
    stain_normalisation: str = "none",
    scale_normalisation: str = "none",
) -> int:
    """Compute backbone features of cells and write them to rows [first_row, first_row + n).

    Args:
        items: (cells.zarr URL, zarr index, view) per row; view 0 is the cell as it is, views
            1.. are random augmentations of it.
        first_row: the first row this task owns (a chunk boundary: no other task writes there).
        stain_normalisation, scale_normalisation: the model's input normalisation, applied
            before the backbone as the model applies it.

    Returns:
        The number of rows embedded.
    """
    from aml_model.augment import build_augmenter
    from aml_model.preprocess import normalise_for_resnet50
    from aml_model.architecture import input_normalisation

    cache = FeatureCache(store, backbone_id, storage_options)
    backbone = _worker_backbone(backbone_id, cache.weights, image_size, storage_options)
    images = np.empty((len(items), image_size, image_size, 3), np.float32)
    for url in sorted({url for url, _, _ in items}):
        positions = [i for i, (u, _, _) in enumerate(items) if u == url]
        indices = np.array([items[i][1] for i in positions])
        order = np.argsort(indices)
        array = storage.open_cells_array(url, storage_options)
        picked = array.get_orthogonal_selection((indices[order],))
        images[np.array(positions)[order]] = picked
    views = np.array([view for _, _, view in items])
    if (views > 0).any():
        augmenter = build_augmenter(augment, seed=seed + first_row)
        augmented = np.asarray(augmenter(images[views > 0], training=True))
        images[views > 0] = augmented
    inputs = normalise_for_resnet50(images)
    for layer in input_normalisation(ModelConfig(image_size=image_size, backbone_weights="none",
                                                 stain_normalisation=stain_normalisation,
                                                 scale_normalisation=scale_normalisation)):
        inputs = layer(inputs)
    inputs = np.asarray(inputs)
    features = backbone.predict(inputs, batch_size=32, verbose=0)
    target = storage.open_cells_array(cache.array_url, storage_options, name="features", read_only=False)
    target[first_row:first_row + len(items)] = features.astype(np.float16)
    return len(items)
