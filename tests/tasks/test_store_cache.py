"""The machine-local cache of remote models: fetched once, kept under its size cap, safe for files in use."""

import hashlib
import os
import stat
import time

import pytest

from tasks.store_cache import (
    CachedFileMismatchError,
    LocalCacheSettings,
    UnsafeCacheError,
    cached_file,
    evict,
)

MB = 2**20


def _file(folder, name: str, size: int, used_s_ago: float, now: float) -> str:
    path = os.path.join(folder, name)
    with open(path, "wb") as handle:
        handle.write(b"\0" * size)
    os.utime(path, (now - used_s_ago, now - used_s_ago))
    return path


def test_a_miss_fetches_once_and_a_hit_marks_the_file_used(tmp_path):
    settings = LocalCacheSettings(folder=str(tmp_path / "cache"), max_bytes=10 * MB, min_age_s=60)
    calls = []

    def fetch():
        calls.append(1)
        return b"model"

    path = cached_file("v1.keras", fetch, settings)
    assert open(path, "rb").read() == b"model" and calls == [1]
    os.utime(path, (0, 0))
    assert cached_file("v1.keras", fetch, settings) == path
    assert calls == [1], "a cached name is not fetched again"
    assert os.path.getmtime(path) > time.time() - 60, (
        "a hit counts as a use, so eviction keeps the file"
    )
    assert os.listdir(tmp_path / "cache") == ["v1.keras"], "no partial file is left"


def test_eviction_removes_the_least_recently_used_until_the_folder_fits(tmp_path):
    now = time.time()
    folder = str(tmp_path)
    settings = LocalCacheSettings(folder=folder, max_bytes=3 * MB, min_age_s=600)
    oldest = _file(folder, "a.keras", MB, 3 * 86400, now)
    older = _file(folder, "b.keras", MB, 2 * 86400, now)
    old = _file(folder, "c.keras", MB, 86400, now)
    in_use = _file(folder, "d.keras", MB, 10, now)
    stale_partial = _file(folder, "e.keras.123.partial", MB, 7200, now)
    live_partial = _file(folder, "f.keras.456.partial", MB, 5, now)
    removed = evict(settings, now=now)
    assert removed == [stale_partial, oldest]
    left = sorted(os.listdir(folder))
    assert left == ["b.keras", "c.keras", "d.keras", "f.keras.456.partial"]
    assert (
        sum(os.path.getsize(os.path.join(folder, n)) for n in left if not n.endswith(".partial"))
        <= 3 * MB
    )
    assert (
        os.path.exists(older)
        and os.path.exists(old)
        and os.path.exists(in_use)
        and os.path.exists(live_partial)
    )


def test_files_in_use_and_the_new_file_stay_even_over_the_cap(tmp_path, caplog):
    now = time.time()
    folder = str(tmp_path)
    settings = LocalCacheSettings(folder=folder, max_bytes=MB, min_age_s=600)
    recent = _file(folder, "recent.keras", 2 * MB, 60, now)
    new = _file(folder, "new.keras", 2 * MB, 3600, now)
    with caplog.at_level("WARNING", logger="tasks.store_cache"):
        assert evict(settings, keep=new, now=now) == []
    assert os.path.exists(recent) and os.path.exists(new)
    assert "over its 1 MB cap" in caplog.text


def test_a_new_copy_evicts_old_ones(tmp_path):
    now = time.time()
    folder = str(tmp_path)
    settings = LocalCacheSettings(folder=folder, max_bytes=2 * MB, min_age_s=600)
    old = _file(folder, "old.keras", 2 * MB, 86400, now)
    path = cached_file("new.keras", lambda: b"\0" * MB, settings)
    assert not os.path.exists(old) and os.path.exists(path)


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("AML_SMEAR_CACHE_DIR", raising=False)
    monkeypatch.delenv("AML_SMEAR_CACHE_MAX_MB", raising=False)
    assert LocalCacheSettings.from_env() == LocalCacheSettings()
    monkeypatch.setenv("AML_SMEAR_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("AML_SMEAR_CACHE_MAX_MB", "512")
    assert LocalCacheSettings.from_env() == LocalCacheSettings(
        folder=str(tmp_path), max_bytes=512 * MB
    )
    monkeypatch.setenv("AML_SMEAR_CACHE_MAX_MB", "lots")
    with pytest.raises(ValueError, match="AML_SMEAR_CACHE_MAX_MB='lots' is invalid"):
        LocalCacheSettings.from_env()


def test_a_tampered_cached_model_is_refused_and_fetched_again(tmp_path, s3_bucket, monkeypatch):
    from tasks.registry import register_model, resolve_model
    from tasks.store import Store
    from tests.registry_fakes import stand_in_keras_file

    bucket, options = s3_bucket
    store = Store(f"s3://{bucket}/store", options)
    ref = register_model(
        str(stand_in_keras_file(tmp_path / "model.keras")),
        {"config": {"model": {"image_size": 32}}},
        store,
    )
    original = (tmp_path / "model.keras").read_bytes()
    monkeypatch.setenv("AML_SMEAR_CACHE_DIR", str(tmp_path / "cache"))
    ref = resolve_model(ref.version, store)
    assert ref.sha256 == hashlib.sha256(original).hexdigest(), "the card records the model's sha256"
    local = store.local_copy(ref.url, f"{ref.version}.keras", ref.sha256)
    with open(local, "wb") as handle:
        handle.write(b"someone else's model")  # what another user of a shared /tmp could do
    again = store.local_copy(ref.url, f"{ref.version}.keras", ref.sha256)
    assert again == local and open(again, "rb").read() == original

    # The stored model itself replaced: the recorded hash refuses it, and nothing is cached.
    store.write_bytes(ref.url, b"a replaced model")
    os.remove(local)
    with pytest.raises(CachedFileMismatchError, match="not the recorded"):
        store.local_copy(ref.url, f"{ref.version}.keras", ref.sha256)
    assert not os.path.exists(local)


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_the_cache_folder_is_the_users_own(tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o777)
    os.chmod(loose, 0o777)
    cached_file("v1.keras", lambda: b"model", LocalCacheSettings(folder=str(loose)))
    assert stat.S_IMODE(os.stat(loose).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(loose / "v1.keras").st_mode) & 0o077 == 0
    (tmp_path / "link").symlink_to(loose)
    with pytest.raises(UnsafeCacheError, match="AML_SMEAR_CACHE_DIR"):
        cached_file("v1.keras", lambda: b"model", LocalCacheSettings(folder=str(tmp_path / "link")))


def test_default_folder_is_per_user(monkeypatch, tmp_path):
    monkeypatch.delenv("AML_SMEAR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert LocalCacheSettings.from_env().folder == str(tmp_path / "xdg" / "aml-smear")
