"""Run aml-smear's deployments on one machine: a Prefect server on 127.0.0.1, the work pool, the
variables, the deployments of ``deployments/prefect.yaml``, and a process worker.

    python -m app.local_stack up [--port 4200] [--home ~/.aml-smear] [--store URL]
                                         [--retrain-source URL ...] [--s3-endpoint-url URL]
                                         [--backbone-weights URL --backbone-weights-sha256 HEX]
    python -m app.local_stack deploy    # pool + variables + deployments on $PREFECT_API_URL

``up`` stays in the foreground until Ctrl-C (or SIGTERM), then stops the worker, then the
server, each with SIGTERM and, after a short grace, SIGKILL of its process group (a worker can
ignore SIGTERM, and always does once its server is gone; runs in progress are killed and show as
crashed). The server and the worker run in their own process groups, so a terminal's Ctrl-C
reaches only this script, which stops them in that order; their pids are in
``<home>/stack.json`` and their logs in ``<home>/server.log`` and ``<home>/worker.log``.
Variables that already exist on the server are never overwritten; ``aml_smear_code_dir`` (the
pull step's directory) is this checkout unless set. The nightly reads its variables when each run
starts: ``prefect variable set NAME VALUE --overwrite`` changes the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFECT_FILE = "deployments/prefect.yaml"
# The server streams flow-run logs out (off by default in Prefect 3.9): without it `prefect deployment
# run --watch` shows state events only, neither a failure's reason nor where the results are.
LOG_STREAMING = {
    "PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED": "true",
    "PREFECT_SERVER_LOGS_STREAM_PUBLISHING_ENABLED": "true",
}
HOST = "127.0.0.1"
SERVER_START_TIMEOUT_S = 180
# A Prefect 3.9 process worker may not exit on SIGTERM at all: a short grace, then SIGKILL.
STOP_TIMEOUT_S = 10


class StackError(RuntimeError):
    """A step of the stack failed; the message says which and where its log is."""


def _prefect(*args: str) -> list[str]:
    # The prefect of this interpreter's environment, whatever is first on PATH.
    return [sys.executable, "-m", "prefect", *args]


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        return probe.connect_ex((HOST, port)) != 0


def _tail(path: Path, lines: int = 30) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def _start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start ``command`` in its own process group, output to ``log``."""
    with open(log, "ab") as handle:
        return subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group of ``process``, SIGKILL what is left after STOP_TIMEOUT_S."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    # Also whatever the leader left behind in its group (flow-run processes, Dask workers).
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _wait_healthy(api_url: str, server: subprocess.Popen, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            message = (
                f"the Prefect server exited with status {server.returncode}; {log}:\n{_tail(log)}"
            )
            raise StackError(message)
        with suppress(httpx.HTTPError):
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    message = (
        f"the Prefect server at {api_url} was not healthy within {SERVER_START_TIMEOUT_S} s; {log}"
    )
    raise StackError(message)


def _variable_values(args: argparse.Namespace) -> dict:
    """The Prefect variables the command line gives values for (``None``: not given)."""
    from app.serve import DEFAULT_TIMEZONE

    values = {
        "aml_smear_store": args.store,
        "aml_smear_retrain_sources": args.sources or None,
        "aml_smear_s3_endpoint_url": args.s3_endpoint_url,
        "aml_smear_backbone_weights": args.backbone_weights,
        "aml_smear_backbone_weights_sha256": args.backbone_weights_sha256,
        "aml_smear_code_dir": str(REPO_ROOT),
        "aml_smear_timezone": DEFAULT_TIMEZONE,
    }
    return {name: value for name, value in values.items() if value is not None}


def deploy(api_url: str, values: dict, env: dict[str, str]) -> None:
    """Create the process work pool and the absent variables, then ``prefect deploy --all``.

    Args:
        api_url: the Prefect API.
        values: {Prefect variable: value} to create where the variable does not exist yet.
        env: environment of the ``prefect deploy`` subprocess.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.variables import Variable
    from prefect.workers.process import ProcessWorker

    from app.serve import REQUIRED_VARIABLES, VARIABLES, WORK_POOL, pull_step_variables

    # A work pool's run first changes to aml_smear_code_dir (the pull step): unset, every run fails.
    required = REQUIRED_VARIABLES | pull_step_variables()

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as client:
            try:
                client.read_work_pool(WORK_POOL)
            except ObjectNotFound:
                # The process worker's own default template, as `prefect work-pool create --type process`.
                client.create_work_pool(
                    WorkPoolCreate(
                        name=WORK_POOL,
                        type="process",
                        base_job_template=ProcessWorker.get_default_base_job_template(),
                    )
                )
                print(f"created work pool {WORK_POOL!r} (process)", flush=True)
        missing = []
        for name in VARIABLES:
            if Variable.get(name) is not None:
                continue
            if name in values:
                Variable.set(name, values[name])
                print(f"set Prefect variable {name} = {json.dumps(values[name])}", flush=True)
                if values[name] == []:
                    print(
                        f"  the nightly retrain fails until it has sources: prefect variable set {name} "
                        "'[\"/path/to/labelled\"]' --overwrite",
                        flush=True,
                    )
            elif name in required:
                missing.append(name)
        if missing:
            # Deploying anyway would register an empty string where the flow expects a value.
            commands = "\n".join(
                f"  prefect variable set {name} '<{VARIABLES[name]}>'" for name in missing
            )
            message = f"Prefect variable(s) {', '.join(missing)} not set; set them, then deploy again:\n{commands}"
            raise StackError(message)
    result = subprocess.run(
        _prefect("--no-prompt", "deploy", "--all", "--prefect-file", PREFECT_FILE),
        cwd=REPO_ROOT,
        env={**env, "PREFECT_API_URL": api_url},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        message = f"prefect deploy failed (status {result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        raise StackError(message)
    print(f"deployed {PREFECT_FILE}", flush=True)


def _record(home: Path, api_url: str, started: list[subprocess.Popen]) -> None:
    """Write the API URL and the pids (server, then worker) to ``<home>/stack.json``."""
    (home / "stack.json").write_text(
        json.dumps({"api_url": api_url, "pids": [p.pid for p in started]})
    )


class _Stop(Exception):
    """SIGTERM arrived: stop the stack as on Ctrl-C."""


def _raise_stop(signum, frame) -> None:
    raise _Stop


def up(port: int, home: Path, values: dict) -> int:
    """Start the server, deploy, start the worker, and wait; returns the exit status.

    Unset variables default to a store under ``home`` and no retrain sources: the nightly retrain
    fails (visibly, in the UI) until its sources are set, and scoring needs a champion first
    (``aml-smear bootstrap``, docs/deployments.md).
    """
    if not _port_is_free(port):
        message = f"port {port} on {HOST} is in use (another Prefect server?): pass --port"
        raise StackError(message)
    from aml_model.tf_log import QUIET_LEVEL
    from app.serve import WORK_POOL

    values = {"aml_smear_store": str(home / "store"), "aml_smear_retrain_sources": [], **values}
    prefect_home = home / "prefect"
    prefect_home.mkdir(parents=True, exist_ok=True)
    api_url = f"http://{HOST}:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_API_URL": api_url}
    # Offline, the server's telemetry only logs errors (and can lock its SQLite database).
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The worker's flow runs (and their Dask workers) log to worker.log as `aml-smear` to a terminal:
    # no TensorFlow C++ lines, tracebacks or per-task completion lines; the UI keeps the last two.
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_LEVEL)
    env.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS", "flows.logs.ConsoleHandler")
    env.update(LOG_STREAMING)
    signal.signal(signal.SIGTERM, _raise_stop)
    started: list[subprocess.Popen] = []
    try:
        server_log = home / "server.log"
        server = _start(
            _prefect("server", "start", "--host", HOST, "--port", str(port)), server_log, env
        )
        started.append(server)
        _record(home, api_url, started)
        _wait_healthy(api_url, server, server_log)
        print(f"Prefect server on {api_url} (log {server_log})", flush=True)
        deploy(api_url, values, env)
        worker_log = home / "worker.log"
        worker = _start(
            _prefect(
                "worker",
                "start",
                "--pool",
                WORK_POOL,
                "--type",
                "process",
                "--name",
                f"local-{socket.gethostname()}",
            ),
            worker_log,
            env,
        )
        started.append(worker)
        _record(home, api_url, started)
        print(f"worker polling pool {WORK_POOL!r} (log {worker_log})", flush=True)
        print(
            f"ready: export PREFECT_API_URL={api_url}; then e.g.\n"
            f"  prefect deployment run 'score-smears/on-demand' --param source=/path/to/smears "
            f"--param store=/path/to/store --watch\n"
            f"Ctrl-C stops the worker, then the server.",
            flush=True,
        )
        while all(process.poll() is None for process in started):
            time.sleep(1)
        dead = next(process for process in started if process.poll() is not None)
        log = server_log if dead is server else worker_log
        print(
            f"{'server' if dead is server else 'worker'} exited with status {dead.returncode}; "
            f"{log}:\n{_tail(log)}",
            file=sys.stderr,
            flush=True,
        )
        return 1
    except (KeyboardInterrupt, _Stop):
        return 0
    finally:
        # The worker first: once its server is gone it would ignore SIGTERM.
        for process in reversed(started):
            _stop(process)
        print("stopped", flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser(
        "up", help="server + pool + variables + deployments + worker, until Ctrl-C"
    )
    up_parser.add_argument("--port", type=int, default=4200, help="server port on 127.0.0.1 [4200]")
    up_parser.add_argument(
        "--home",
        type=Path,
        default=Path.home() / ".aml-smear",
        help="PREFECT_HOME (<home>/prefect), logs and pids [~/.aml-smear]",
    )
    deploy_parser = commands.add_parser(
        "deploy", help="pool + variables + deployments on $PREFECT_API_URL"
    )
    for sub in (up_parser, deploy_parser):
        sub.add_argument("--store", help="value for the variable aml_smear_store if it is not set")
        sub.add_argument(
            "--retrain-source",
            action="append",
            default=[],
            dest="sources",
            help="a labelled source for aml_smear_retrain_sources if it is not set (repeatable)",
        )
        sub.add_argument(
            "--s3-endpoint-url", help="value for aml_smear_s3_endpoint_url if it is not set"
        )
        sub.add_argument(
            "--backbone-weights",
            help="value for aml_smear_backbone_weights if it is not set: "
            "imagenet, none, or a weights file path/URL (offline)",
        )
        sub.add_argument(
            "--backbone-weights-sha256",
            help="value for aml_smear_backbone_weights_sha256 if it is not set",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    values = _variable_values(args)
    try:
        if args.command == "up":
            return up(args.port, args.home.expanduser().resolve(), values)
        api_url = os.environ.get("PREFECT_API_URL")
        if not api_url:
            raise StackError("deploy needs PREFECT_API_URL, e.g. http://127.0.0.1:4200/api")
        deploy(api_url, values, dict(os.environ))
        return 0
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
