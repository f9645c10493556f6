"""The nightly deployment on a real one-machine stack, as a worker host runs it: the code a clean git
checkout (a clone of HEAD, imported first), its configuration in Prefect variables read when each run
starts, the store seeded by `aml-smear bootstrap`, a backbone weights file given by variable (offline).

Checks the acceptance of issue 17: a run with nothing changed since bootstrap skips training; changing a
variable changes the next run, without deploying again.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import httpx
import pytest

from tests.corpus import compose_patient_cohort
from tests.deployments.conftest import REPO_ROOT, running_stack, stack_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(3600)]

PREFECT = [sys.executable, "-m", "prefect"]


@pytest.fixture(scope="module")
def clean_stack(tmp_path_factory, lmu_cells):
    import keras

    from aml_model.architecture import build_backbone
    from aml_model.config import ModelConfig

    root = tmp_path_factory.mktemp("nightly-stack")
    # Uncommitted changes make code unknown (it always trains): run committed code, as a worker host does.
    code = root / "code"
    subprocess.run(
        ["git", "clone", "-q", str(REPO_ROOT), str(code)], check=True, capture_output=True
    )
    plan = {f"P{i:02d}": ((14, 6) if i % 2 else (3, 17)) for i in range(12)}
    source = compose_patient_cohort(lmu_cells, root / "labelled", plan)
    keras.utils.set_random_seed(3)
    weights = root / "backbone.weights.h5"
    build_backbone(ModelConfig(image_size=32, backbone_weights="none")).save_weights(weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    env = {**stack_env(root / "home" / "prefect"), "PYTHONPATH": str(code)}
    # The variables from the arguments, as `make prefect-local STORE=... RETRAIN_SOURCES=... BACKBONE_WEIGHTS=...`.
    yield from running_stack(
        root,
        code,
        env,
        [str(source)],
        "--backbone-weights",
        str(weights),
        "--backbone-weights-sha256",
        digest,
    )


def _run(command: list[str], stack: dict, timeout: int = 1800) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command,
        cwd=stack["store"].parent / "code",
        env=stack["env"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    worker_log = (stack["home"] / "worker.log").read_text()[-4000:]
    assert result.returncode == 0, (
        f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}\nworker:\n{worker_log}"
    )
    return result


def _nightly(stack: dict) -> str:
    """Runs the nightly deployment by hand, as docs/deployments.md says; returns its retrain-report artifact."""
    _run(
        [
            *PREFECT,
            "deployment",
            "run",
            "retrain-and-evaluate/nightly",
            "--watch",
            "--watch-interval",
            "2",
            "--watch-timeout",
            "1700",
        ],
        stack,
    )
    response = httpx.get(f"{stack['api_url']}/artifacts/retrain-report/latest", timeout=10)
    response.raise_for_status()
    return response.json()["data"]


def _versions(store) -> list[str]:
    return sorted(p.name for p in (store / "models").iterdir() if p.is_dir())


def test_bootstrap_then_the_nightly_skips_until_a_variable_changes(clean_stack):
    store = clean_stack["store"]
    for name, value in (
        ("aml_smear_image_size", "32"),
        ("aml_smear_epochs", "2"),
        ("aml_smear_retrain_options", '{"augment_views": 0, "patience": 1}'),
    ):
        _run([*PREFECT, "variable", "set", name, value], clean_stack, timeout=120)

    bootstrap = _run(
        [
            sys.executable,
            "-c",
            "from app.cli import main; main()",
            "bootstrap",
            "--from-variables",
            "--workers",
            "1",
        ],
        clean_stack,
    )
    (champion,) = _versions(store)
    assert f"champion {champion}: trained on 1 source(s)" in bootstrap.stdout
    card = json.loads((store / "models" / champion / "model_card.json").read_text())
    assert card["code_version"]["dirty"] is False and card["config"]["model"]["image_size"] == 32
    assert card["backbone"]["weights"].endswith("backbone.weights.h5")

    report = _nightly(clean_stack)
    assert (
        report.startswith("# Training skipped")
        and f"nothing changed since champion {champion}" in report
    )
    assert _versions(store) == [champion]

    # A changed variable changes the next run: no deploy in between.
    _run(
        [*PREFECT, "variable", "set", "aml_smear_epochs", "3", "--overwrite"],
        clean_stack,
        timeout=120,
    )
    report = _nightly(clean_stack)
    (trained,) = set(_versions(store)) - {champion}
    assert report.startswith(f"# Model {trained}")
    assert (
        json.loads((store / "models" / trained / "model_card.json").read_text())["config"]["train"][
            "epochs"
        ]
        == 3
    )


def test_a_failing_nightly_shows_its_reason_in_flow_run_inspect(clean_stack):
    import re
    import time

    # A variable naming a weights file that is not there: the run starts and fails, at once (no flow
    # retry); its reason is its state's message.
    missing = clean_stack["store"].parent / "no-such.weights.h5"
    _run(
        [*PREFECT, "variable", "set", "aml_smear_backbone_weights", str(missing), "--overwrite"],
        clean_stack,
        timeout=120,
    )
    started = _run(
        [*PREFECT, "deployment", "run", "retrain-and-evaluate/nightly"], clean_stack, timeout=120
    )
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1)
    deadline = time.monotonic() + 600
    while True:
        state = httpx.get(f"{clean_stack['api_url']}/flow_runs/{flow_run_id}", timeout=10).json()[
            "state"
        ]
        if (
            state["type"] in ("FAILED", "COMPLETED", "CRASHED", "CANCELLED")
            or time.monotonic() > deadline
        ):
            break
        time.sleep(2)
    assert state["type"] == "FAILED", state
    # As an operator reads it (rich wraps long lines), and as JSON.
    inspect = _run([*PREFECT, "flow-run", "inspect", flow_run_id], clean_stack, timeout=120)
    # An expected failure's message is the reason alone (flows.logs.failure_reason), no exception type.
    reason = f"backbone_weights {missing} does not exist"
    assert "".join(reason.split()) in "".join(inspect.stdout.split()), inspect.stdout[-3000:]
    shown = json.loads(
        _run(
            [*PREFECT, "flow-run", "inspect", flow_run_id, "--output", "json"],
            clean_stack,
            timeout=120,
        ).stdout
    )
    assert (
        shown["state"]["type"] == "FAILED"
        and shown["state"]["message"] == reason
        and shown["run_count"] == 1
    )
    _run([*PREFECT, "variable", "unset", "aml_smear_backbone_weights"], clean_stack, timeout=120)
