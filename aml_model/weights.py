"""Resolve backbone weights to a local file: Keras' ImageNet cache, or a weights file by URL."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import fsspec

from aml_model.errors import BackboneWeightsError, WeightsHashMismatchError

__all__ = [
    "IMAGENET_NOTOP_FILE",
    "IMAGENET_NOTOP_MD5",
    "fetch_weights_file",
    "imagenet_weights_file",
    "sha256_of_file",
]

logger = logging.getLogger(__name__)

IMAGENET_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_NOTOP_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + IMAGENET_NOTOP_FILE
)
IMAGENET_NOTOP_MD5 = "4d473c1dd8becc155b73f8504c6f6626"


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
            IMAGENET_NOTOP_FILE, IMAGENET_NOTOP_URL, cache_subdir="models", file_hash=IMAGENET_NOTOP_MD5
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


def fetch_weights_file(
    url: str, sha256: str | None = None, storage_options: dict | None = None
) -> str:
    """Make a weights file available locally and verify it.

    Args:
        url: a local path or any fsspec URL (``s3://...``, ``file://...``). Keras decides the
            format by the name: ``*.weights.h5`` (Keras 3) or ``*.h5`` (legacy, e.g. the
            ImageNet file).
        sha256: expected hex digest; checked when given.
        storage_options: passed to fsspec for remote URLs.

    Returns:
        Path of a local file with the same base name as the URL.

    Raises:
        BackboneWeightsError: the file does not exist or cannot be read.
        WeightsHashMismatchError: the file's sha256 differs from ``sha256``.
    """
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        if "file" in fs.protocol:
            local = path
            if not os.path.isfile(local):
                raise FileNotFoundError(local)
        else:
            folder = Path(tempfile.gettempdir()) / "aml-smear-weights" / hashlib.sha256(url.encode()).hexdigest()[:16]
            folder.mkdir(parents=True, exist_ok=True)
            local = str(folder / Path(path).name)
            partial = local + ".partial"
            with fs.open(path, "rb") as remote, open(partial, "wb") as out:
                shutil.copyfileobj(remote, out)
            os.replace(partial, local)
    except (OSError, ValueError) as exc:
        message = f"backbone weights file {url} cannot be read: {exc}"
        raise BackboneWeightsError(message) from exc
    if sha256 is not None:
        found = sha256_of_file(local)
        if found != sha256.lower():
            message = f"backbone weights file {url} has sha256 {found}, expected {sha256.lower()}"
            raise WeightsHashMismatchError(message)
    return local
