"""The Store: one location (a local folder, an ``s3://`` prefix, ``memory://``) and everything it
takes to read and write there.

A :class:`Store` is built once per flow run or command (:meth:`Store.at`) and handed to tasks,
which pickle it to Dask workers: it is only a URL and its fsspec options, so it travels cleanly,
and each process opens the filesystem itself (fsspec caches one instance per process).

It owns:
- the filesystem and its options (:attr:`fs`);
- the layout of the run store (:meth:`run`, :meth:`scoring`, :attr:`models`, :attr:`backbones`...;
  the paths of one run are :class:`tasks.store_layout.RunPaths`, a view of the store);
- whole-object writes: a local file is written under a temporary name and renamed into place,
  one S3 PUT is atomic, so a reader never sees half a table;
- the champion pointer's conditional write (:meth:`update_object`, :mod:`tasks.store_conditional`);
- the machine-local copies of files Keras must read from disk (:meth:`local_copy`,
  :mod:`tasks.store_cache`).

Every method takes full URLs on this store's filesystem (the layout builds them), so a URL read
from a record can be used as it is.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import fsspec

from tasks import store_conditional
from tasks.store_cache import cached_file
from tasks.store_layout import RunPaths, ScoringPaths
from tasks.store_url import is_local, join

if TYPE_CHECKING:
    import pandas as pd
    import zarr

__all__ = [
    "IMAGES",
    "PROBABILITIES",
    "Store",
    "is_local",
    "is_part",
    "join",
    "part_name",
    "table_bytes",
]

IMAGES = "images"
PROBABILITIES = "probabilities"


def part_name(start: int, stop: int) -> str:
    """The name of a table dataset's part holding the cells of Zarr slots [start, stop): name order
    is slot order."""
    return f"part-{start:010d}-{stop:010d}.parquet"


def is_part(name: str) -> bool:
    return name.startswith("part-") and name.endswith(".parquet")


def table_bytes(frame: pd.DataFrame) -> bytes:
    """A DataFrame as the bytes of one Parquet file, without its index."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


@dataclass(frozen=True)
class Store:
    """A location and the fsspec options that reach it.

    Attributes:
        url: the root, as the user gave it (a local path, ``file://``, ``s3://bucket/prefix``...).
        options: fsspec storage options, e.g. ``{"client_kwargs": {"endpoint_url": ...}}``.
            Credentials are never put here: s3fs reads the usual ``AWS_*`` variables and
            profiles, so they never appear in flow parameters, pickles or logs.
    """

    url: str
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def at(cls, url: str, s3_endpoint_url: str | None = None) -> Store:
        """The store at ``url``, reached through the S3 endpoint ``s3_endpoint_url`` (MinIO, moto...)
        when ``url`` is on S3 and one is given."""
        if s3_endpoint_url and url.startswith(("s3://", "s3a://")):
            return cls(url, {"client_kwargs": {"endpoint_url": s3_endpoint_url}})
        return cls(url)

    def sub(self, *parts: str) -> Store:
        """The store rooted at ``parts`` below this one."""
        return Store(self.path(*parts), self.options)

    def path(self, *parts: str) -> str:
        """The URL of ``parts`` under the root."""
        return join(self.url, *parts) if parts else self.url

    # The filesystem.

    def resolve(self, url: str | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
        """The filesystem and its own path for ``url`` (default: the root).

        Object stores are reached without fsspec's listings cache: a long-lived worker would
        otherwise answer from a listing made before another process wrote (an image that arrived
        since is "not found", a marker written since is missing).
        """
        target = url or self.url
        options = dict(self.options)
        if "://" in target and not target.startswith(("file://", "local://", "memory://")):
            options.setdefault("use_listings_cache", False)
        return fsspec.core.url_to_fs(target, **options)

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self.resolve()[0]

    @property
    def is_local(self) -> bool:
        return is_local(self.fs)

    # The layout (docs/design.md, "The run store").

    def run(self, run_id: str) -> RunPaths:
        return RunPaths(self, run_id)

    def scoring(self, run_id: str, score_id: str) -> ScoringPaths:
        return self.run(run_id).scoring(score_id)

    runs = property(lambda self: self.path("runs"))
    models = property(lambda self: self.path("models"))
    backbones = property(lambda self: self.path("backbones"))
    features = property(lambda self: self.path("features"))
    ledger = property(lambda self: self.path("ledger"))
    staging = property(lambda self: self.path("_staging"))

    # Reading.

    def exists(self, url: str) -> bool:
        fs, path = self.resolve(url)
        return fs.exists(path)

    def list_names(self, url: str) -> list[str]:
        """Names of the entries directly under the folder ``url``, sorted; empty when it does not exist."""
        fs, path = self.resolve(url)
        if not fs.exists(path):
            return []
        return sorted(posixpath.basename(entry.rstrip("/")) for entry in fs.ls(path, detail=False))

    def read_bytes(self, url: str) -> bytes:
        fs, path = self.resolve(url)
        return fs.cat_file(path)

    def read_json(self, url: str) -> Any:
        return json.loads(self.read_bytes(url))

    def read_table(
        self, url: str, filters: list[tuple] | None = None, columns: list[str] | None = None
    ) -> pd.DataFrame:
        """A table: one Parquet object, or a dataset (a folder of ``part-*.parquet``, read in name
        order), the layout of a run's cell tables since #30 (docs/design.md, "Tables").

        ``filters`` and ``columns`` are pyarrow's, applied to each part.
        """
        import pandas as pd

        parts = self.table_parts(url)
        if not parts:
            return pd.read_parquet(
                io.BytesIO(self.read_bytes(url)), filters=filters, columns=columns
            )
        frames = [
            pd.read_parquet(io.BytesIO(self.read_bytes(part)), filters=filters, columns=columns)
            for part in parts
        ]
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]

    def table_columns(self, url: str) -> list[str]:
        """The column names of a table (one Parquet object, or a dataset's first part)."""
        import pyarrow.parquet as pq

        first = (self.table_parts(url) or [url])[0]
        return pq.read_schema(io.BytesIO(self.read_bytes(first))).names

    def table_parts(self, url: str) -> list[str]:
        """The URLs of a table dataset's parts in name order; empty when ``url`` is one object (or
        nothing)."""
        fs, path = self.resolve(url)
        if not fs.isdir(path):
            return []
        names = sorted(posixpath.basename(entry.rstrip("/")) for entry in fs.ls(path, detail=False))
        return [join(url, name) for name in names if is_part(name)]

    def local_copy(self, url: str, name: str, sha256: str | None = None) -> str:
        """A local file holding ``url``'s bytes: the file itself on a local store, else a copy in the
        user's bounded cache (:mod:`tasks.store_cache`), fetched once per machine.

        Keras reads models and weights from local paths only; ``name`` must identify the content
        (a version or a hash), since an existing copy of that name is reused, after its ``sha256``
        (the content's recorded digest, when known) is checked.
        """
        fs, path = self.resolve(url)
        if is_local(fs):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{url} does not exist")
            return path
        return cached_file(name, lambda: self.read_bytes(url), sha256=sha256)

    # Writing: whole objects only.

    def write_bytes(self, url: str, data: bytes) -> str:
        """Write a whole object atomically: temporary name + rename locally, one PUT elsewhere."""
        fs, path = self.resolve(url)
        if is_local(fs):
            folder = os.path.dirname(path)
            os.makedirs(folder, exist_ok=True)
            partial = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.partial")
            with open(partial, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, path)
        else:
            try:
                fs.pipe_file(path, data)
            except PermissionError as exc:
                # s3fs says only "Access Denied": name the object, so a failed run says where.
                message = f"cannot write {url}: {exc}"
                raise PermissionError(message) from exc
        return url

    def write_json(self, url: str, payload: Any) -> str:
        return self.write_bytes(
            url, json.dumps(payload, indent=2, sort_keys=True, default=str).encode()
        )

    def write_table(self, frame: pd.DataFrame, url: str) -> str:
        """Write a DataFrame as one Parquet object, atomically."""
        return self.write_bytes(url, table_bytes(frame))

    def write_part(self, frame: pd.DataFrame, url: str) -> dict:
        """Write one part of a table dataset, atomically; returns its receipt: url, rows, bytes and
        the sha256 of what was written, small enough for Prefect to keep."""
        data = table_bytes(frame)
        self.write_bytes(url, data)
        return {
            "url": url,
            "rows": len(frame),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }

    def copy_tree(self, source: str, target: str) -> int:
        """Copy every file under the folder ``source`` to the same place under ``target``, each
        written whole (:meth:`write_bytes`), so the copy is byte for byte the original.

        Returns:
            How many files were copied (0 when ``source`` does not exist).
        """
        fs, root = self.resolve(source)
        if not fs.exists(root):
            return 0
        # A leftover of an interrupted local write is not part of the record.
        files = [path for path in fs.find(root) if not path.endswith(".partial")]
        for path in files:
            self.write_bytes(join(target, posixpath.relpath(path, root)), fs.cat_file(path))
        return len(files)

    def remove(self, url: str, recursive: bool = False) -> None:
        """Delete an object or folder; a missing one is not an error."""
        fs, path = self.resolve(url)
        if fs.exists(path):
            fs.rm(path, recursive=recursive)

    def update_object(self, url: str, change: Callable[[bytes | None], bytes]) -> bytes:
        """Replace the object at ``url`` by ``change(its bytes, or None)`` atomically, safe between
        processes (:func:`tasks.store_conditional.update_object`)."""
        fs, path = self.resolve(url)
        return store_conditional.update_object(
            fs, path, url, change, lambda new: self.write_bytes(url, new)
        )

    # Zarr arrays of cells (zarr and pandas are imported where used: the command line imports the Store).

    def zarr_store(self, url: str, read_only: bool) -> zarr.abc.store.Store:
        import zarr

        fs, path = self.resolve(url)
        if is_local(fs):
            return zarr.storage.LocalStore(path, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(
            url, storage_options=dict(self.options), read_only=read_only
        )

    def create_cells_array(
        self, url: str, n_cells: int, image_size: int, chunk_cells: int
    ) -> zarr.Array:
        """Create (or open, when it already has this shape) the ``images`` array of a cells group.

        Shape `(n_cells, image_size, image_size, 3)` uint8, one chunk per ``chunk_cells`` cells, so
        a task that owns a whole chunk range never shares a chunk with another task.
        """
        import zarr

        group = zarr.open_group(self.zarr_store(url, read_only=False), mode="a")
        shape = (n_cells, image_size, image_size, 3)
        if IMAGES in group:
            array = group[IMAGES]
            if array.shape != shape or array.chunks[0] != chunk_cells:
                message = (
                    f"{url}/{IMAGES} already exists with shape {array.shape} and chunks "
                    f"{array.chunks}, expected {shape} in chunks of {chunk_cells} cells"
                )
                raise ValueError(message)
            return array
        return group.create_array(
            IMAGES,
            shape=shape,
            chunks=(chunk_cells, image_size, image_size, 3),
            dtype="uint8",
            fill_value=0,
            dimension_names=("cell", "y", "x", "channel"),
            # Blosc zstd level 1 writes 3x and reads 2.5x faster than zarr's default zstd level 0
            # on real cells, at the same size (measured on 64 LMU cells). Without the byte shuffle,
            # which has nothing to reorder in one-byte pixels, the same bytes (118 KiB per 224 px
            # cell, raw 147) are written in 0.87 ms instead of 1.20 and read in 0.22 instead of 0.31
            # (256 LMU cells, AMD EPYC); lz4 would be faster still, at 144 KiB per cell on S3.
            compressors=[zarr.codecs.BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle")],
        )

    def create_probabilities_array(self, url: str, n_cells: int, chunk_cells: int) -> zarr.Array:
        """The ``probabilities`` array of a cells group: float32 `(n_cells,)`, NaN until scored.

        Chunked like the images, so the task that scores a chunk range owns its chunks here too.
        """
        import zarr

        group = zarr.open_group(self.zarr_store(url, read_only=False), mode="a")
        if PROBABILITIES in group and group[PROBABILITIES].shape == (n_cells,):
            return group[PROBABILITIES]
        return group.create_array(
            PROBABILITIES,
            shape=(n_cells,),
            chunks=(chunk_cells,),
            dtype="float32",
            fill_value=float("nan"),
            dimension_names=("cell",),
            overwrite=True,
        )

    def open_cells_array(self, url: str, name: str = IMAGES, read_only: bool = True) -> zarr.Array:
        """Open one array (``images`` or ``probabilities``) of a cells group.

        Opened for writing, it writes every chunk it is given: the writers here write whole chunks of
        decoded cells or scores, which are seldom all fill, and Zarr's default compares each chunk
        with the fill value first, which cost 0.3 ms of CPU a 224 px cell (Blosc zstd level 1, 256
        LMU cells, AMD EPYC: 0.98 ms a cell with the comparison, 0.70 without). A chunk that is all
        fill reads back the same either way.
        """
        import zarr

        store = self.zarr_store(url, read_only=read_only)
        array = zarr.open_group(store, mode="r" if read_only else "r+")[name]
        return array if read_only else array.with_config({"write_empty_chunks": True})
