"""flows.runner's temporary Prefect server: it rests on Prefect's private SubprocessASGIServer, so
this test starts it for real under the pinned Prefect (pyproject.toml) and fails if that moves."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
