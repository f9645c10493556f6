"""flows.runner: its temporary Prefect server rests on Prefect's private SubprocessASGIServer, so
a test starts it for real under the pinned Prefect (pyproject.toml) and fails if that moves; the
workers it starts run Dask's profiler only when asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from flows.runner import DASK_LOG_LENGTH, WORKER_PROFILE_ENV, local_cluster_kwargs
from tests.conftest import PROJECT_ROOT

SCRIPT = """
import json, os, urllib.request
from flows.runner import shared_prefect_api
with shared_prefect_api() as url:
    health = urllib.request.urlopen(url + "/health", timeout=30).read().decode()
    print(json.dumps({"url": url, "health": health, "exported": os.environ.get("PREFECT_API_URL")}))
print(json.dumps({"after": os.environ.get("PREFECT_API_URL")}))
"""


def test_without_an_api_one_temporary_server_is_started_exported_and_stopped(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr
    during, after = (json.loads(line) for line in run.stdout.splitlines()[-2:])
    assert during["url"].startswith("http://127.0.0.1:") and during["url"].endswith("/api")
    assert during["health"] == "true" and during["exported"] == during["url"], (
        "Dask workers inherit it"
    )
    assert after["after"] is None


@pytest.mark.parametrize(("setting", "profiling"), [(None, False), ("True", True)])
def test_workers_started_here_profile_only_when_asked(monkeypatch, tmp_path, setting, profiling):
    import dask
    from distributed import Client, LocalCluster

    if setting is None:
        monkeypatch.delenv(WORKER_PROFILE_ENV, raising=False)
    else:
        monkeypatch.setenv(WORKER_PROFILE_ENV, setting)
    # Turned on in this process: a worker that took the flow's settings would profile.
    with dask.config.set({"distributed.worker.profile.enabled": True}):
        kwargs = local_cluster_kwargs(1) | {"local_directory": str(tmp_path)}
        with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
            (sampling,) = client.run(
                lambda dask_worker: "profile" in dask_worker.periodic_callbacks
            ).values()
            (logged,) = client.run(
                lambda dask_worker: dask_worker.batched_stream.recent_message_log.maxlen
            ).values()
            (scheduler_logged,) = client.run_on_scheduler(
                lambda dask_scheduler: [
                    s.recent_message_log.maxlen for s in dask_scheduler.stream_comms.values()
                ]
            )
    assert sampling is profiling
    assert local_cluster_kwargs(1)["env"][WORKER_PROFILE_ENV] == str(profiling)
    # Each stream keeps DASK_LOG_LENGTH recent messages, not Dask's 1,000.
    assert logged == scheduler_logged == DASK_LOG_LENGTH
