"""A real one-machine stack (app/local_stack.py): Prefect server, pool, deployments, worker.

Not Prefect's test harness: the stack runs as subprocesses with their own PREFECT_HOME on a
free loopback port, exactly as `make prefect-local` runs it. Every process is stopped by pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 400


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stack_env(prefect_home: Path) -> dict[str, str]:
    """This process's environment without its Prefect settings (the flow tests' harness may have set
    some), plus quick polling and a one-worker Dask cluster per flow run for a 2-core machine."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="1",
        AML_SMEAR_DASK_WORKERS="1",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    return env


def stop_process_group(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM ``process``'s group, SIGKILL it after ``grace_s``; wait for the leader."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(grace_s)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory):
    """Yields {api_url, env, store, sources, home}; stops the stack and every process it started."""
    root = tmp_path_factory.mktemp("stack")
    yield from running_stack(
        root, REPO_ROOT, stack_env(root / "home" / "prefect"), [str(root / "labelled")]
    )


def running_stack(root: Path, code: Path, env: dict[str, str], sources: list[str], *arguments: str):
    """`local_stack.py up` of the checkout ``code`` with ``env``, its home and store under ``root``;
    yields {api_url, env, store, sources, home} once ready, then stops everything it started."""
    home, store = root / "home", root / "store"
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    output = root / "stack.out"
    command = [
        sys.executable,
        "-m",
        "app.local_stack",
        "up",
        "--port",
        str(port),
        "--home",
        str(home),
        "--store",
        str(store),
        *[a for source in sources for a in ("--retrain-source", source)],
        *arguments,
    ]
    with open(output, "wb") as handle:
        stack = subprocess.Popen(
            command,
            cwd=code,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "ready:" not in output.read_text():
            if stack.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"the stack did not come up (status {stack.poll()}):\n{output.read_text()}"
                )
            time.sleep(0.5)
        yield {
            "api_url": api_url,
            "env": {**env, "PREFECT_API_URL": api_url},
            "store": store,
            "sources": sources,
            "home": home,
        }
    finally:
        # The stack stops its worker, then its server; then make sure of every pid it recorded.
        stop_process_group(stack, grace_s=60)
        pids = (
            json.loads((home / "stack.json").read_text())["pids"]
            if (home / "stack.json").exists()
            else []
        )
        for pid in pids:
            with suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        assert "stopped" in output.read_text(), output.read_text()
