"""End to end on one machine: `prefect deployment run` of the scoring deployment through a real
server and process worker, the nightly schedule read back from the API, and `aml-smear serve`.

The tests run in file order on one stack: serving re-registers the deployments without a
work pool, so it comes last.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.deployments.conftest import REPO_ROOT, stop_process_group

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

PREFECT = [sys.executable, "-m", "prefect"]


def _deployment(api_url: str, name: str) -> dict:
    response = httpx.get(f"{api_url}/deployments/name/{name}", timeout=10)
    response.raise_for_status()
    return response.json()


def _variable(api_url: str, name: str):
    response = httpx.get(f"{api_url}/variables/name/{name}", timeout=10)
    response.raise_for_status()
    return response.json()["value"]


def test_nightly_retrain_is_registered_with_its_schedule_and_variables(local_stack):
    nightly = _deployment(local_stack["api_url"], "retrain-and-evaluate/nightly")
    (schedule,) = nightly["schedules"]
    assert schedule["active"] is True
    assert (schedule["schedule"]["cron"], schedule["schedule"]["timezone"]) == (
        "0 2 * * *",
        "Europe/Berlin",
    )
    # Nothing is fixed at deploy time: each run reads the Prefect variables that the stack set.
    assert nightly["parameters"] == {}
    assert _variable(local_stack["api_url"], "aml_smear_retrain_sources") == local_stack["sources"]
    assert _variable(local_stack["api_url"], "aml_smear_store") == str(local_stack["store"])
    # Flow runs change to the checkout first (the pull step), read on the worker when a run starts.
    assert nightly["pull_steps"] == [
        {
            "prefect.deployments.steps.set_working_directory": {
                "directory": "{{ prefect.variables.aml_smear_code_dir }}"
            }
        }
    ]
    assert _variable(local_stack["api_url"], "aml_smear_code_dir") == str(REPO_ROOT)
    assert nightly["work_pool_name"] == "aml-smear"
    assert nightly["global_concurrency_limit"]["limit"] == 1
    assert nightly["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    on_demand = _deployment(local_stack["api_url"], "score-smears/on-demand")
    assert on_demand["schedules"] == [] and on_demand["work_pool_name"] == "aml-smear"


def _watched_run(local_stack, cwd: Path, *params: str) -> tuple[subprocess.CompletedProcess, str]:
    """`prefect deployment run score-smears/on-demand --param ... --watch`: the finished command and its flow run id."""
    arguments = [a for param in params for a in ("--param", param)]
    # A wide console: Rich would wrap the watched log lines at 80 columns.
    run = subprocess.run(
        [
            *PREFECT,
            "deployment",
            "run",
            "score-smears/on-demand",
            *arguments,
            "--watch",
            "--watch-timeout",
            "600",
        ],
        cwd=cwd,
        env={**local_stack["env"], "COLUMNS": "1000"},
        capture_output=True,
        text=True,
        timeout=700,
    )
    found = re.search(r"UUID: ([0-9a-f-]{36})", run.stdout)
    assert found, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run, found.group(1)


def _artifacts(api_url: str, flow_run_id: str) -> dict[str, dict]:
    """The flow run's artifacts by key, as the Prefect server holds them."""
    response = httpx.post(
        f"{api_url}/artifacts/filter",
        timeout=10,
        json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}},
    )
    response.raise_for_status()
    return {artifact["key"]: artifact for artifact in response.json()}


def test_scoring_deployment_run_from_the_cli_ends_with_its_calls_and_reports_as_artifacts(
    local_stack, lmu_cells, tiny_model_file, tmp_path
):
    import pandas as pd

    from tests.corpus import compose_patient_cohort

    source = compose_patient_cohort(
        lmu_cells, tmp_path / "smears", {"P01": (12, 8), "P02": (2, 18)}
    )
    store = tmp_path / "store"
    run, flow_run_id = _watched_run(
        local_stack,
        tmp_path,
        f"source={source}",
        f"store={store}",
        "options="
        + json.dumps({"model": str(tiny_model_file), "min_cells": 5, "run_id": "deployed"}),
    )
    worker_log = (local_stack["home"] / "worker.log").read_text()[-4000:]
    assert run.returncode == 0, (
        f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}\nworker log:\n{worker_log}"
    )

    state = httpx.get(f"{local_stack['api_url']}/flow_runs/{flow_run_id}", timeout=10).json()[
        "state"
    ]
    assert state["type"] == "COMPLETED"
    # The run's one scoring (runs/<run>/scores/<score_id>/, docs/design.md "The run store").
    (patients_file,) = (store / "runs" / "deployed" / "scores").glob("*/patients.parquet")
    patients = pd.read_parquet(patients_file)
    assert sorted(patients["patient_id"]) == ["P01", "P02"]
    assert patients["n_scored"].tolist() == [20, 20]
    assert patients["model_version"].str.startswith("file-").all()

    # The calls and the report index are artifacts of the run, and the watch ends with their links.
    artifacts = _artifacts(local_stack["api_url"], flow_run_id)
    calls = artifacts["patient-calls"]["data"]
    calls = json.loads(calls) if isinstance(calls, str) else calls
    assert {row["patient_id"]: row["call"] for row in calls} == dict(
        zip(patients["patient_id"], patients["call"], strict=True)
    )
    index = patients_file.parent / "reports" / "index.html"
    assert artifacts["report-index"]["data"].endswith(f"(file://{index})") and index.is_file()
    lines = [line for line in run.stdout.splitlines() if "per-patient calls: " in line]
    assert len(lines) == 1, run.stdout[-5000:]
    (last,) = lines
    assert f"reports: {index}" in last
    for key, label in (("patient-calls", "per-patient calls"), ("report-index", "report index")):
        url = f"{local_stack['api_url']}/artifacts/{artifacts[key]['id']}"
        assert f"{label}: {url}" in last, last
        assert httpx.get(url, timeout=10).json()["key"] == key


def test_a_failing_deployment_run_ends_with_its_one_line_reason(
    local_stack, tiny_model_file, tmp_path
):
    env = local_stack["env"]
    missing, store = tmp_path / "no-such-smears", tmp_path / "store"
    notes = tmp_path / "notes-only"
    notes.mkdir()
    (notes / "README.txt").write_text("the smears follow next week")
    model = "options=" + json.dumps({"model": str(tiny_model_file)})
    for source, reason in (
        (missing, f"source {missing} does not exist"),
        (notes, f"no images found in {notes}"),
    ):
        run, flow_run_id = _watched_run(
            local_stack, tmp_path, f"source={source}", f"store={store}", model
        )
        assert run.returncode == 1, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        # The reason is the state's message, read back from the server, and the watch shows it.
        state = httpx.get(f"{local_stack['api_url']}/flow_runs/{flow_run_id}", timeout=10).json()[
            "state"
        ]
        assert state["type"] == "FAILED"
        assert state["message"].startswith(reason) and "\n" not in state["message"], state[
            "message"
        ]
        assert f"Finished in state Failed('{state['message']}')" in run.stdout, run.stdout[-3000:]
        inspect = subprocess.run(
            [*PREFECT, "flow-run", "inspect", flow_run_id, "--output", "json"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert inspect.returncode == 0, inspect.stderr
        assert json.loads(inspect.stdout)["state"]["message"] == state["message"]
        assert not store.exists()

    # A value outside a parameter's choices: the server refuses to create the run (the deployment's
    # parameter schema comes from the flow's types), so nothing runs and nothing is written.
    typo = subprocess.run(
        [
            *PREFECT,
            "deployment",
            "run",
            "score-smears/on-demand",
            "--param",
            f"source={tmp_path}",
            "--param",
            f"store={store}",
            "--param",
            'options={"precision": "fp16"}',
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = typo.stdout + typo.stderr
    assert typo.returncode == 1, output
    assert "precision" in output and "fp16" in output and "float32" in output, output
    assert not store.exists()


def test_aml_smear_serve_registers_the_deployments_on_a_real_server(local_stack, tmp_path):
    api_url = local_stack["api_url"]
    output = tmp_path / "serve.out"
    with open(output, "wb") as handle:
        serve = subprocess.Popen(
            [str(Path(sys.executable).parent / "aml-smear"), "serve", "--workers", "1"],
            cwd=REPO_ROOT,
            env=local_stack["env"],
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + 300

    def wait_until(condition) -> None:
        while not condition():
            assert serve.poll() is None and time.monotonic() < deadline, output.read_text()[-3000:]
            time.sleep(0.5)

    try:
        # Served deployments have no work pool: the serving process runs them itself.
        wait_until(
            lambda: (
                not any(
                    _deployment(api_url, name)["work_pool_name"]
                    for name in ("score-smears/on-demand", "retrain-and-evaluate/nightly")
                )
            )
        )
        nightly = _deployment(api_url, "retrain-and-evaluate/nightly")
        (schedule,) = nightly["schedules"]
        assert (schedule["schedule"]["cron"], schedule["schedule"]["timezone"]) == (
            "0 2 * * *",
            "Europe/Berlin",
        )
        assert nightly["parameters"] == {}  # read from the variables when each run starts
        assert nightly["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
        # serve prints each line after the API has the deployment: wait for it, as for the registration.
        wait_until(
            lambda: (
                "serving retrain-and-evaluate/nightly (0 2 * * *, Europe/Berlin)"
                in output.read_text()
            )
        )
    finally:
        stop_process_group(serve, grace_s=20)
