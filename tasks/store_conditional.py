"""Compare-and-swap updates of one small object (the champion pointer), safe between processes.

:func:`update_object` reads the object, lets a function decide its new bytes, and writes them only
if nobody wrote in between; otherwise it reads again and asks again. On S3 the write is a
conditional PUT (``If-Match`` on the ETag read, ``If-None-Match: *`` when there was no object),
which AWS S3 and moto's server enforce. On local disk the read, the decision and the write (a
temporary file renamed into place) happen under an exclusive ``flock`` of a lock file beside the
object, which threads and processes on one host respect (not across NFS clients). Other file
systems (``memory://``) are guarded within one process only.
"""

from __future__ import annotations

import fcntl
import os
import random
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

import fsspec

from aml_model.errors import AmlSmearError

__all__ = ["ConflictError", "update_object"]

#: Tries of a contended S3 update before it gives up; each waits a random, growing pause.
ATTEMPTS = 50
_PAUSE_S = 0.05
_PROCESS_LOCK = threading.Lock()


class ConflictError(AmlSmearError, RuntimeError):
    """Other writers kept changing the object: the update was not made."""


def update_object(
    fs: fsspec.AbstractFileSystem,
    path: str,
    url: str,
    change: Callable[[bytes | None], bytes],
    write: Callable[[bytes], object],
) -> bytes:
    """Replace the object at ``path`` on ``fs`` by ``change(its bytes, or None when absent)``, atomically.

    ``change`` may run more than once (once per attempt) and may raise to refuse: nothing is
    written then, and its exception propagates. Its bytes should differ from any earlier write
    (the pointer carries a write id): a conditional PUT that failed because its own retried
    request landed is recognised by them.

    Args:
        fs, path: the object's filesystem and its path there; ``url`` names it in errors.
        write: writes the new bytes whole (:meth:`tasks.store.Store.write_bytes`), used where the
            filesystem itself is locked (local disk, ``memory://``).

    Returns:
        The bytes written.

    Raises:
        ConflictError: on S3, :data:`ATTEMPTS` conditional writes in a row lost to other writers.
    """
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    if "file" in protocols or "local" in protocols:
        with _flocked(path):
            current = fs.cat_file(path) if os.path.exists(path) else None
            new = change(current)
            write(new)
            return new
    if "s3" in protocols:
        return _update_s3(fs, path, url, change)
    with _PROCESS_LOCK:
        current = fs.cat_file(path) if fs.exists(path) else None
        new = change(current)
        write(new)
        return new


@contextmanager
def _flocked(path: str):
    """An exclusive lock on ``.<name>.lock`` beside ``path`` (made if missing, never removed)."""
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    # Read-only is enough for flock, so a user who may not write the lock file can still take it.
    fd = os.open(os.path.join(folder, f".{name}.lock"), os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _update_s3(fs, path: str, url: str, change: Callable[[bytes | None], bytes]) -> bytes:
    bucket, key = path.split("/", 1)
    for attempt in range(ATTEMPTS):
        try:
            got = fs.call_s3("get_object", Bucket=bucket, Key=key)
            current, condition = _read_body(fs, got), {"IfMatch": got["ETag"]}
        except FileNotFoundError:
            current, condition = None, {"IfNoneMatch": "*"}
        new = change(current)
        try:
            fs.call_s3("put_object", Bucket=bucket, Key=key, Body=new, **condition)
        except (OSError, FileExistsError) as exc:
            if not _lost_the_race(exc):
                raise
            # s3fs retries a PUT whose response was lost: its 412 may be our own write, landed.
            if _read_current(fs, bucket, key) == new:
                fs.invalidate_cache(path)
                return new
            time.sleep(random.uniform(0, _PAUSE_S * (attempt + 1)))
            continue
        fs.invalidate_cache(path)
        return new
    message = (
        f"{url} kept changing under {ATTEMPTS} conditional writes: nothing was written; try again"
    )
    raise ConflictError(message)


def _read_current(fs, bucket: str, key: str) -> bytes | None:
    try:
        return _read_body(fs, fs.call_s3("get_object", Bucket=bucket, Key=key))
    except FileNotFoundError:
        return None


def _read_body(fs, got: dict) -> bytes:
    """The body of an s3fs ``get_object`` response (an aiobotocore stream, read on s3fs's loop)."""
    from fsspec.asyn import sync

    async def read() -> bytes:
        async with got["Body"] as body:
            return await body.read()

    return sync(fs.loop, read)


def _lost_the_race(exc: BaseException) -> bool:
    """A 412 (the object changed, or appeared, since it was read) or S3's 409 for concurrent
    conditional writes; s3fs raises them as OSError or FileExistsError with the ClientError as cause."""
    cause = exc.__cause__ or exc.__context__
    response = getattr(cause, "response", None) or {}
    code = response.get("Error", {}).get("Code")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)
