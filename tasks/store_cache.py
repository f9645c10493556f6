"""The machine-local copies of remote models and weights, bounded in size.

Keras loads models and weights from local files only, so a worker scoring or training from an
s3:// store first copies the file here. Every nightly retrain adds a new model version
(about 100-150 MB at 224 px), so the folder is kept under a size cap: after each new copy, the
files used longest ago are removed until the folder fits. A file used within the last
``min_age_s`` is never removed, so one process cannot pull a model from under another that is
loading it.

The folder is the user's own (created with mode 0700; one that others may write is refused),
since a file found there is loaded by Keras: a cached file whose expected sha256 is known (the
model card's ``model_sha256``, a backbone file named by its hash) is checked before each use and
fetched again when it differs. Copies are written under unique temporary names and renamed into
place.

Settings come from the environment, so that every worker process of a deployment reads the same:
``AML_SMEAR_CACHE_DIR`` (default ``$XDG_CACHE_HOME/aml-smear``, else ``~/.cache/aml-smear``; a
folder of its own, since any file in it may be evicted) and ``AML_SMEAR_CACHE_MAX_MB`` (default 2048),
parsed by :class:`tasks.settings.CacheSettings`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from tasks.settings import CacheSettings

logger = logging.getLogger(__name__)

_PARTIAL = ".partial"


def _default_folder() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "aml-smear")


class UnsafeCacheError(PermissionError):
    """The cache folder is not the user's own: files in it could have been put there by others."""


class CachedFileMismatchError(ValueError):
    """The fetched bytes do not have the sha256 their source recorded: nothing was cached."""


def _private_folder(folder: str) -> None:
    """Create ``folder`` with mode 0700, or make an existing one of ours 0700; refuse one of another
    user's, or a link (POSIX only; elsewhere the folder is created as the platform does)."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    if os.name != "posix":
        return
    info = os.lstat(folder)
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid():
        message = (
            f"the model cache {folder} is a link or another user's folder: set AML_SMEAR_CACHE_DIR to a "
            f"folder of your own"
        )
        raise UnsafeCacheError(message)
    if info.st_mode & 0o077:
        os.chmod(folder, 0o700)


def sha256_of(path: str) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class LocalCacheSettings:
    """Where the local copies live and how much room they may take.

    Attributes:
        folder: the cache folder (created on first use).
        max_bytes: size cap in bytes; the folder may exceed it only by files used within
            ``min_age_s``.
        min_age_s: seconds after its last use during which a file is never removed; also the age
            after which a ``.partial`` file is taken as left by a crashed copy and removed.
    """

    folder: str = field(default_factory=_default_folder)
    max_bytes: int = int(CacheSettings.model_fields["cache_max_mb"].default * 2**20)
    min_age_s: float = 3600.0

    @classmethod
    def from_env(cls) -> LocalCacheSettings:
        """The settings named by ``AML_SMEAR_CACHE_DIR`` and ``AML_SMEAR_CACHE_MAX_MB``, else the defaults.

        Raises:
            tasks.settings.SettingError: AML_SMEAR_CACHE_MAX_MB is not a size in MB, 0 or more.
        """
        settings = CacheSettings.read()
        return cls(
            folder=settings.cache_dir or _default_folder(),
            max_bytes=int(settings.cache_max_mb * 2**20),
        )


def cached_file(
    name: str,
    fetch: Callable[[], bytes],
    settings: LocalCacheSettings | None = None,
    sha256: str | None = None,
) -> str:
    """The local path of the file ``name``, written from ``fetch()`` when it is not cached yet.

    ``name`` must identify the content (a model version, a backbone id): an existing file of that
    name is reused, after its sha256 is checked when ``sha256`` is given (a file that differs is
    removed and fetched again). A cache hit marks the file as just used; a new copy is written
    under a unique temporary name and renamed into place, then older files are evicted (:func:`evict`).

    Args:
        name: file name inside the cache folder, e.g. ``"20261130T101853Z-2090980b.keras"``.
        fetch: returns the file's bytes; called only on a miss.
        settings: defaults to :meth:`LocalCacheSettings.from_env`.
        sha256: the content's expected hex digest, from its card or registry; None when unknown.

    Returns:
        Absolute path of the cached file.

    Raises:
        UnsafeCacheError: the folder is a link or another user's.
        CachedFileMismatchError: the fetched bytes differ from ``sha256``.
    """
    settings = settings or LocalCacheSettings.from_env()
    _private_folder(settings.folder)
    local = os.path.join(settings.folder, name)
    if os.path.isfile(local):
        if sha256 is None or sha256_of(local) == sha256.lower():
            os.utime(local)
            return local
        logger.warning(
            "local cache: %s differs from its recorded sha256 %s...: fetched again",
            local,
            sha256[:12],
        )
        _remove(local)
    data = fetch()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256.lower():
        message = f"{name}: the fetched file's sha256 is not the recorded {sha256}; it was not used"
        raise CachedFileMismatchError(message)
    partial = f"{local}.{uuid.uuid4().hex}{_PARTIAL}"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(partial, local)
    evict(settings, keep=local)
    return local


def evict(
    settings: LocalCacheSettings, keep: str | None = None, now: float | None = None
) -> list[str]:
    """Remove the least recently used files until the folder fits ``settings.max_bytes``.

    Files used within ``settings.min_age_s`` and ``keep`` stay whatever the size; ``.partial``
    files older than ``min_age_s`` (left by a crashed copy) are removed; files another process
    removes meanwhile are skipped.

    Args:
        keep: a path never removed (the file just written).
        now: the time to age files against, in seconds since the epoch; defaults to now.

    Returns:
        The paths removed, oldest first.
    """
    now = time.time() if now is None else now
    removed: list[str] = []
    files: list[tuple[float, int, str]] = []
    for entry in os.scandir(settings.folder):
        try:
            if not entry.is_file():
                continue
            stat = entry.stat()
        except FileNotFoundError:
            continue
        if entry.name.endswith(_PARTIAL):
            if now - stat.st_mtime > settings.min_age_s and _remove(entry.path):
                removed.append(entry.path)
            continue
        files.append((stat.st_mtime, stat.st_size, entry.path))
    total = sum(size for _, size, _ in files)
    freed = 0
    for used, size, path in sorted(files):
        if total - freed <= settings.max_bytes:
            break
        if path == keep or now - used < settings.min_age_s:
            continue
        if _remove(path):
            removed.append(path)
            freed += size
    if freed:
        logger.info(
            "local cache %s: removed %d file(s), %.0f MB, to stay under %.0f MB",
            settings.folder,
            len(removed),
            freed / 2**20,
            settings.max_bytes / 2**20,
        )
    if total - freed > settings.max_bytes:
        logger.warning(
            "local cache %s holds %.0f MB, over its %.0f MB cap, all of it used within the last %.0f s",
            settings.folder,
            (total - freed) / 2**20,
            settings.max_bytes / 2**20,
            settings.min_age_s,
        )
    return removed


def _remove(path: str) -> bool:
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    return True
