"""infra/: the compose file parses and builds from this repository; images install from pyproject.toml."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from flows.runner import DASK_LOG_LENGTH, DASK_LOG_LENGTH_ENV, WORKER_PROFILE_ENV
from tasks.devices import GPU_RESOURCE

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA = REPO_ROOT / "infra"
DOCKERFILES = sorted(INFRA.glob("*.Dockerfile"))


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def _pins(path: Path) -> dict[str, str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return dict(line.lower().split("==", 1) for line in lines if "==" in line)


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = (line.strip() for line in text.splitlines())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_every_service_has_a_pinned_image_or_a_build_context_in_the_repo(compose):
    services = compose["services"]
    expected = {
        "postgres",
        "prefect-server",
        "minio",
        "prefect-worker",
        "dask-scheduler",
        "dask-worker",
    }
    assert expected <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            context = (INFRA / service["build"]["context"]).resolve()
            assert context.is_dir(), (name, context)
            assert (context / service["build"]["dockerfile"]).is_file(), name
        else:
            # A fixed release, not a moving tag.
            repository, _, tag = service["image"].rpartition(":")
            assert repository and tag and tag != "latest", (name, service["image"])


def test_gpu_workers_reserve_one_gpu_each_and_use_the_gpu_image(compose):
    gpu_workers = {
        name: s for name, s in compose["services"].items() if "gpu" in s.get("profiles", [])
    }
    assert len(gpu_workers) >= 1
    device_ids = []
    for name, service in gpu_workers.items():
        assert service["build"]["dockerfile"] == "infra/gpu.Dockerfile", name
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert (
            device["driver"] == "nvidia"
            and device["capabilities"] == ["gpu"]
            and len(device["device_ids"]) == 1
        )
        device_ids += device["device_ids"]
        assert service["command"][:3] == ["dask", "worker", "tcp://dask-scheduler:8786"]
        # The resource model tasks ask for (tasks.devices.model_tasks).
        assert service["command"][-2:] == ["--resources", f"{GPU_RESOURCE}=1"], name
    cpu_workers = [
        s
        for s in compose["services"].values()
        if s.get("command", [])[:2] == ["dask", "worker"] and "gpu" not in s.get("profiles", [])
    ]
    assert cpu_workers and all("--resources" not in s["command"] for s in cpu_workers)
    assert len(set(device_ids)) == len(device_ids), "two workers on one GPU"


def test_the_dask_processes_keep_the_flows_history_length_and_workers_no_profiler(compose):
    # As the Dask processes a flow starts (flows/runner.py).
    dask = {
        name: s
        for name, s in compose["services"].items()
        if s.get("command", [])[:2] in (["dask", "worker"], ["dask", "scheduler"])
    }
    assert "dask-scheduler" in dask and len(dask) >= 3
    for name, service in dask.items():
        env = service.get("environment", {})
        assert env.get(DASK_LOG_LENGTH_ENV) == str(DASK_LOG_LENGTH), name
        if service["command"][1] == "worker":
            assert env.get(WORKER_PROFILE_ENV) == "False", name


def test_secrets_come_from_the_environment_never_from_the_files(compose):
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|ACCESS_KEY", key):
                assert str(value).startswith("${"), (name, key)
    for dockerfile in DOCKERFILES:
        for instruction, arguments in _instructions(dockerfile):
            assert not (
                instruction in {"ENV", "ARG"} and re.search(r"AWS_|PASSWORD|SECRET", arguments)
            ), dockerfile
    # The flow-running services reach Prefect and the store, and the worker's runs the Dask cluster.
    worker = compose["services"]["prefect-worker"]["environment"]
    assert worker["AML_SMEAR_DASK_SCHEDULER"] == "tcp://dask-scheduler:8786"
    for name in ("prefect-worker", "dask-worker"):
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PREFECT_API_URL"} <= set(
            compose["services"][name]["environment"]
        ), name


def test_prefect_server_runs_the_release_the_project_pins(compose):
    prefect = _pins(REPO_ROOT / "constraints.txt")["prefect"]
    assert (
        compose["services"]["prefect-server"]["image"] == f"prefecthq/prefect:{prefect}-python3.11"
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfiles_install_the_project_from_pyproject_only(dockerfile):
    extras = set(
        tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"][
            "optional-dependencies"
        ]
    )
    instructions = _instructions(dockerfile)
    copied = " ".join(arguments for instruction, arguments in instructions if instruction == "COPY")
    assert "pyproject.toml" in copied and "constraints.txt" in copied
    installs = [
        shlex.split(arguments)
        for instruction, arguments in instructions
        if instruction == "RUN" and "pip install" in arguments
    ]
    assert len(installs) == 1, "one pip install: the project"
    (words,) = installs
    arguments = words[words.index("install") + 1 :]
    assert arguments[:2] == ["-c", "constraints.txt"], arguments
    # Only the project itself, with extras that pyproject.toml defines: no second dependency list.
    (target,) = arguments[2:]
    match = re.fullmatch(r"\.(?:\[([a-z,-]+)\])?", target)
    assert match, target
    assert set(filter(None, (match.group(1) or "").split(","))) <= extras
    base = next(arguments for instruction, arguments in instructions if instruction == "FROM")
    assert ":" in base and not base.endswith(":latest"), base
    # BuildKit's per-Dockerfile ignore file keeps .venv and stores out of the build context.
    ignore = Path(f"{dockerfile}.dockerignore")
    assert "*" in ignore.read_text().splitlines(), ignore
