"""URL helpers of the Store (:mod:`tasks.store`), apart so that the layout (:mod:`tasks.store_layout`)
can join paths without importing the Store, which imports the layout."""

from __future__ import annotations

import posixpath

import fsspec

__all__ = ["is_local", "join"]


def join(url: str, *parts: str) -> str:
    """Join path parts onto a URL with forward slashes, keeping its protocol."""
    return posixpath.join(url.rstrip("/"), *parts)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """True for the local file system."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return "file" in protocols or "local" in protocols
