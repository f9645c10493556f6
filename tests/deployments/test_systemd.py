"""deployments/systemd: the server and worker units parse, restart on failure, log to journald, and
run commands that exist with options that those commands take."""

from __future__ import annotations

import configparser
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from app.serve import WORK_POOL
from tests.deployments.conftest import REPO_ROOT

UNITS = REPO_ROOT / "deployments" / "systemd"
# The units install the repository at /opt/aml-smear with its virtualenv in .venv (deployments/README.md).
INSTALLED = "/opt/aml-smear/"


def _unit(name: str) -> configparser.ConfigParser:
    # strict: a key twice in a section is an error here (systemd would take both: say it in one line).
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str
    parser.read_string((UNITS / name).read_text())
    return parser


@pytest.mark.parametrize(
    "name", ["aml-smear-prefect-server.service", "aml-smear-prefect-worker.service"]
)
def test_units_restart_on_failure_and_log_to_journald(name):
    unit = _unit(name)
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert service["Restart"] == "on-failure" and int(service["RestartSec"]) > 0
    assert service["StandardOutput"] == service["StandardError"] == "journal"
    assert service["SyslogIdentifier"] == name.removesuffix(".service")
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert service["WorkingDirectory"] == INSTALLED.rstrip("/")
    environment = dict(item.split("=", 1) for item in shlex.split(service["Environment"]))
    assert environment["PREFECT_HOME"] == "/var/lib/aml-smear/prefect"
    if (
        name == "aml-smear-prefect-server.service"
    ):  # as the local stack's server: `--watch` shows the logs
        from app.local_stack import LOG_STREAMING

        assert LOG_STREAMING.items() <= environment.items()


def _help(command: list[str]) -> str:
    # The installed program of this environment: /opt/aml-smear/.venv/bin/X is .venv/bin/X here.
    program = Path(sys.executable).parent / Path(command[0]).name
    assert command[0].startswith(INSTALLED + ".venv/bin/") and program.exists(), command[0]
    words = [word for word in command[1:] if not word.startswith("-")][:2]
    result = subprocess.run(
        [str(program), *words, "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_units_run_the_server_and_a_worker_of_the_pool():
    server = shlex.split(_unit("aml-smear-prefect-server.service")["Service"]["ExecStart"])
    worker_unit = _unit("aml-smear-prefect-worker.service")
    worker = shlex.split(worker_unit["Service"]["ExecStart"])
    assert server[1:3] == ["server", "start"] and worker[1:3] == ["worker", "start"]
    for command in (server, worker):
        text = _help(command)
        for option in (word for word in command if word.startswith("--")):
            assert option in text, f"{option} is not an option of {' '.join(command[1:3])}"
    host, port = server[server.index("--host") + 1], server[server.index("--port") + 1]
    environment = dict(
        item.split("=", 1) for item in shlex.split(worker_unit["Service"]["Environment"])
    )
    assert environment["PREFECT_API_URL"] == f"http://{host}:{port}/api" and host == "127.0.0.1"
    assert (
        worker[worker.index("--pool") + 1] == WORK_POOL
        and worker[worker.index("--type") + 1] == "process"
    )
    assert (
        worker_unit["Unit"]["After"]
        == worker_unit["Unit"]["Wants"]
        == "aml-smear-prefect-server.service"
    )
