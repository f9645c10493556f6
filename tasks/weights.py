"""Backbone weights files named by a URL, made local for :mod:`aml_model`, which reads local files only.

A weights file on a local filesystem is used where it is. One elsewhere (``s3://...``) is fetched
into the machine's bounded cache (:mod:`tasks.store_cache`, the cache of :meth:`tasks.store.Store.local_copy`)
under a name made of its content's sha256:

- with the sha256 the configuration or the backbone's card records, a cached copy of that name is
  reused after its digest is checked, and a fetched file that differs is refused;
- without one, the file is fetched every time (a copy cached earlier may be of an older file at
  the same URL) and cached under the digest of the bytes fetched, so the same content is kept once.

What is recorded (model cards, the flow's results) keeps the URL; only the model is built from
the local copy (:func:`aml_model.architecture.build_backbone`'s ``weights_file``).
"""

from __future__ import annotations

import hashlib
import posixpath

from aml_model.config import ModelConfig
from aml_model.errors import BackboneWeightsError, WeightsHashMismatchError
from aml_model.weights import local_weights_file, local_weights_path
from tasks.store import Store, is_local
from tasks.store_cache import CachedFileMismatchError, cached_file

__all__ = ["fetch_backbone_weights", "fetch_weights_file"]

#: The longest tail of the URL's file name kept in the cached copy's name (after the digest):
#: enough for Keras to tell a ``.weights.h5`` file from a legacy ``.h5`` one by its name.
_NAME_TAIL = 100


def fetch_backbone_weights(model: ModelConfig, store: Store) -> str | None:
    """The local file of ``model.backbone_weights`` when it names a weights file, else None.

    Pass the result as ``weights_file`` to :func:`aml_model.architecture.build_backbone` (or
    ``whole_backbone``, ``build_model``, ``assemble_model``), with ``model`` itself unchanged.

    Args:
        model: its ``backbone_weights`` ("imagenet", "none", or a file's path or URL) and
            ``backbone_weights_sha256``.
        store: the store whose options reach the URL (an S3 endpoint).

    Returns:
        None for "imagenet" (Keras' own download cache) and "none", else a checked local file.

    Raises:
        BackboneWeightsError: the file does not exist or cannot be read.
        WeightsHashMismatchError: its sha256 differs from ``model.backbone_weights_sha256``.
    """
    if model.backbone_weights.lower() in ("imagenet", "none"):
        return None
    return fetch_weights_file(store, model.backbone_weights, model.backbone_weights_sha256)


def fetch_weights_file(store: Store, url: str, sha256: str | None = None) -> str:
    """A local file holding the weights file ``url``, its sha256 checked when known.

    Args:
        store: the store whose options reach ``url`` (``url`` itself may lie outside it).
        url: a local path, a ``file://`` URL, or any fsspec URL (``s3://...``).
        sha256: the file's expected hex digest (a configuration's or a backbone card's); None when
            unknown, in which case a remote file is fetched again rather than taken from the cache.

    Returns:
        The file's own path when it is local, else its copy in the machine's cache, named
        ``<sha256>-<file name>`` so that Keras reads the format its name says.

    Raises:
        BackboneWeightsError: the file does not exist or cannot be read.
        WeightsHashMismatchError: the file's sha256 differs from ``sha256``.
    """
    if local_weights_path(url) is not None:
        return local_weights_file(url, sha256)
    fs, path = _resolve(store, url)
    if is_local(fs):
        return local_weights_file(path, sha256)
    tail = posixpath.basename(path.rstrip("/"))[-_NAME_TAIL:]
    if sha256 is not None:
        return _cached(store, url, sha256.lower(), tail)
    data = _read(store, url)
    digest = hashlib.sha256(data).hexdigest()
    return cached_file(f"{digest}-{tail}", lambda: data, sha256=digest)


def _cannot_read(url: str, exc: Exception) -> BackboneWeightsError:
    message = f"backbone weights file {url} cannot be read: {exc}"
    return BackboneWeightsError(message)


def _resolve(store: Store, url: str):
    try:
        return store.resolve(url)
    except (ValueError, ImportError) as exc:  # an unknown protocol, or its package missing
        raise _cannot_read(url, exc) from exc


def _read(store: Store, url: str) -> bytes:
    try:
        return store.read_bytes(url)
    except (OSError, ValueError) as exc:
        raise _cannot_read(url, exc) from exc


def _cached(store: Store, url: str, sha256: str, tail: str) -> str:
    """``url``'s copy in the cache under its recorded ``sha256``: reused when cached and unchanged,
    else fetched and checked (:func:`tasks.store_cache.cached_file`, as :meth:`Store.local_copy`
    does; the fetch here also keeps the fetched file's digest, which the error names)."""
    fetched: dict[str, str] = {}

    def fetch() -> bytes:
        data = _read(store, url)
        fetched["sha256"] = hashlib.sha256(data).hexdigest()
        return data

    try:
        return cached_file(f"{sha256}-{tail}", fetch, sha256=sha256)
    except CachedFileMismatchError as exc:
        message = f"backbone weights file {url} has sha256 {fetched['sha256']}, expected {sha256}"
        raise WeightsHashMismatchError(message) from exc
