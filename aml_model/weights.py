"""Resolve backbone weights to a local file: Keras' ImageNet cache, or a local weights file, checked.

This library reads local files only: a weights file named by a remote URL is fetched by the
caller (:mod:`tasks.weights`) and handed over as a local path.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np

from aml_model.errors import BackboneWeightsError, WeightsHashMismatchError

__all__ = [
    "IMAGENET_NOTOP_FILE",
    "IMAGENET_NOTOP_MD5",
    "PARTIAL_FORMAT",
    "imagenet_weights_file",
    "load_backbone_weights",
    "local_weights_file",
    "local_weights_path",
    "partial_weights_layers",
    "save_partial_weights",
    "sha256_of_file",
]

logger = logging.getLogger(__name__)

IMAGENET_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_NOTOP_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + IMAGENET_NOTOP_FILE
)
IMAGENET_NOTOP_MD5 = "4d473c1dd8becc155b73f8504c6f6626"
#: The ``aml_smear_format`` attribute of a file holding only a backbone's first layers.
PARTIAL_FORMAT = "resnet50-partial/1"


def keras_home() -> Path:
    """The folder Keras caches downloads in (``$KERAS_HOME``, default ``~/.keras``)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))


def imagenet_weights_file() -> str:
    """Return the local path of the ImageNet ResNet50 no-top weights.

    Uses Keras' own download and cache (``$KERAS_HOME/models/``), which checks the file's md5.

    Raises:
        BackboneWeightsError: the weights are not cached and cannot be downloaded (offline).
    """
    import keras

    try:
        return keras.utils.get_file(
            IMAGENET_NOTOP_FILE,
            IMAGENET_NOTOP_URL,
            cache_subdir="models",
            file_hash=IMAGENET_NOTOP_MD5,
        )
    except Exception as exc:  # Keras raises bare Exception for URL and HTTP failures
        cached = keras_home() / "models" / IMAGENET_NOTOP_FILE
        message = (
            f"ImageNet weights for ResNet50 are not available: {exc}. This machine cannot download "
            f"them. Either place {IMAGENET_NOTOP_FILE} (md5 {IMAGENET_NOTOP_MD5}) at {cached}, or "
            f"pass a weights file path or URL as backbone_weights (--backbone-weights PATH), or use "
            f"backbone_weights='none' for an untrained backbone."
        )
        raise BackboneWeightsError(message) from exc


def sha256_of_file(path: str | Path) -> str:
    """Hex sha256 of a local file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def local_weights_path(location: str) -> str | None:
    """The local path ``location`` names: itself for a path, the path of a ``file://`` URL; None for
    any other URL (``s3://...``, ``https://...``, a chained ``simplecache::...``), which this
    library does not read."""
    if "://" not in location and "::" not in location:
        return location
    parsed = urlparse(location)
    if (
        "::" in location
        or parsed.scheme not in ("file", "local")
        or parsed.netloc not in ("", "localhost")
    ):
        return None
    return url2pathname(parsed.path)


def local_weights_file(location: str, sha256: str | None = None) -> str:
    """Check a local weights file: it exists and, when ``sha256`` is given, has that digest.

    A weights file on another filesystem (``s3://...``) is not read here: the caller fetches it
    first (:func:`tasks.weights.fetch_weights_file`, through the machine's bounded cache) and
    passes the local copy.

    Args:
        location: a local path or a ``file://`` URL. Keras decides the format by the name:
            ``*.weights.h5`` (Keras 3) or ``*.h5`` (legacy, e.g. the ImageNet file).
        sha256: expected hex digest; checked when given.

    Returns:
        The file's local path.

    Raises:
        BackboneWeightsError: ``location`` is a remote URL, or the file does not exist or cannot be read.
        WeightsHashMismatchError: the file's sha256 differs from ``sha256``.
    """
    local = local_weights_path(location)
    if local is None:
        message = (
            f"backbone weights file {location} is not a local file: it must be fetched first "
            f"(tasks.weights.fetch_weights_file) and its local copy passed as the weights file"
        )
        raise BackboneWeightsError(message)
    try:
        if not os.path.isfile(local):
            raise FileNotFoundError(local)
        found = sha256_of_file(local) if sha256 is not None else None
    except (OSError, ValueError) as exc:
        message = f"backbone weights file {location} cannot be read: {exc}"
        raise BackboneWeightsError(message) from exc
    if sha256 is not None and found != sha256.lower():
        message = f"backbone weights file {location} has sha256 {found}, expected {sha256.lower()}"
        raise WeightsHashMismatchError(message)
    return local


def save_partial_weights(
    backbone, last_layer: str, path: str | Path, dtype: str = "float16"
) -> None:
    """Write the weights of ``backbone``'s layers up to ``last_layer`` in Keras' legacy HDF5 layout.

    The layout is that of Keras' ``.h5`` weights files (the ImageNet file's): a group per layer,
    named after it, so Keras' own ``load_weights(path, by_name=True)`` reads it into a whole
    ResNet50 (:func:`load_backbone_weights`). Only the layers a recipe reads are kept: ResNet50's
    stages 1-3 are 1.46 M values, 2.9 MB in float16, against 94 MB for the whole network. float16
    keeps every weight within 0.05% of its float32 value.

    Args:
        backbone: a whole ResNet50 (or any model whose layers are in input-to-output order).
        last_layer: the name of the last layer to keep (a recipe's feature layer).
        path: the local ``.h5`` file to write.
        dtype: the stored dtype of every weight.
    """
    import h5py
    import keras

    names = [layer.name for layer in backbone.layers]
    if last_layer not in names:
        message = f"{backbone.name} has no layer {last_layer!r}"
        raise ValueError(message)
    layers = backbone.layers[: names.index(last_layer) + 1]
    with h5py.File(path, "w") as handle:
        handle.attrs["layer_names"] = [layer.name.encode() for layer in layers]
        handle.attrs["backend"] = b"tensorflow"
        handle.attrs["keras_version"] = keras.__version__.encode()
        handle.attrs["aml_smear_format"] = PARTIAL_FORMAT
        handle.attrs["last_layer"] = last_layer
        for layer in layers:
            group = handle.create_group(layer.name)
            values = layer.get_weights()
            group.attrs["weight_names"] = [str(i).encode() for i in range(len(values))]
            for i, value in enumerate(values):
                group.create_dataset(str(i), data=np.asarray(value, dtype))


def partial_weights_layers(path: str | Path) -> list[str] | None:
    """The layer names a partial weights file holds, in order; None for any other file."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            if handle.attrs.get("aml_smear_format") != PARTIAL_FORMAT:
                return None
            return [
                name.decode() if isinstance(name, bytes) else str(name)
                for name in handle.attrs["layer_names"]
            ]
    except OSError:  # not an HDF5 file: a Keras .weights.h5 or .keras zip is read by Keras itself
        return None


def load_backbone_weights(backbone, path: str | Path, feature_layer: str) -> None:
    """Load a weights file into a whole ResNet50, in place.

    A partial file (:func:`save_partial_weights`) is read by layer name with Keras' own loader
    and must hold every layer with weights up to ``feature_layer``; the layers after it keep
    their values. Any other file (the ImageNet file, a Keras weights file) is loaded whole.

    Raises:
        BackboneWeightsError: a partial file stops before ``feature_layer``.
    """
    held = partial_weights_layers(path)
    if held is None:
        backbone.load_weights(str(path))
        return
    names = [layer.name for layer in backbone.layers]
    needed = [
        layer.name for layer in backbone.layers[: names.index(feature_layer) + 1] if layer.weights
    ]
    missing = [name for name in needed if name not in held]
    if missing:
        message = (
            f"backbone weights file {path} holds layers up to {held[-1]}, but the recipe reads up to "
            f"{feature_layer} ({len(missing)} layers missing, the first {missing[0]}): use a backbone "
            f"pretrained for this feature layer, or a whole-network weights file"
        )
        raise BackboneWeightsError(message)
    backbone.load_weights(str(path), by_name=True)
