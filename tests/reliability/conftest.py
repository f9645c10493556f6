"""Reliability tests: real Prefect, real Dask processes, real S3 (moto), real faults.

Everything here is started once per session where possible: one Prefect test server, one
2-worker LocalCluster, one cohort of real cells and one undisturbed ("clean") scoring run that
the disturbed runs are compared with.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from tasks.store import Store
from tests.conftest import PROJECT_ROOT

PYTHON = sys.executable

# One shape for every scoring run of the shared cohort, so that all runs are comparable.
# One chunk per task: ten scoring tasks, so a fault can land after some and before the last.
SCORE_PARAMS = {
    "min_cells": 10,
    "chunk_cells": 8,
    "chunks_per_task": 1,
    "batch_size": 8,
    "explain": False,
}
COHORT_PLAN = {"A": (15, 15), "B": (5, 25), "C": (15, 5)}  # patient: (blast, normal) real cells
SCORE_SHARDS = -(
    -sum(sum(counts) for counts in COHORT_PLAN.values())
    // (SCORE_PARAMS["chunk_cells"] * SCORE_PARAMS["chunks_per_task"])
)


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.02):
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the process group of ``process`` (started with start_new_session)."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


def start_python(code: str, *args: str, log: Path, env: dict | None = None) -> subprocess.Popen:
    """Run ``python -c code args...`` in the project root, in its own process group."""
    handle = open(log, "wb")  # noqa: SIM115 - closed with the process by the caller's kill/wait
    return subprocess.Popen(
        [PYTHON, "-c", code, *args],
        cwd=PROJECT_ROOT,
        stdout=handle,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )


# A flow process: score_smears on an existing Dask scheduler; parameters as JSON.
SCORE_PROCESS = """
import json, sys
from prefect_dask import DaskTaskRunner
from flows.parameters import ScoreOptions, nest_options
from flows.score import score_smears
result = score_smears.with_options(task_runner=DaskTaskRunner(address=sys.argv[1]))(
    **nest_options(json.loads(sys.argv[2]), ScoreOptions))
print("RESULT", json.dumps({k: v for k, v in result.items() if k != "patients"}))
"""


def start_score_process(address: str, log: Path, **parameters) -> subprocess.Popen:
    return start_python(SCORE_PROCESS, address, json.dumps(parameters), log=log, env=FAKE_SECRETS)


def score_markers(store: Path, run_id: str) -> dict[str, int]:
    """The score shard markers of a run's scorings (these tests make one per run): name -> mtime (ns)."""
    found = {}
    for path in (store / "runs" / run_id).glob("scores/*/_shards/score/*.json"):
        try:
            found[path.name] = path.stat().st_mtime_ns
        except FileNotFoundError:
            pass
    return found


def read_tables(store: Store, run_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """cells.parquet and patients.parquet of a run's latest complete scoring, rows in a canonical order."""
    from tasks.runs import find_scoring

    paths = find_scoring(store.run(run_id))
    cells = store.read_table(paths.cells_table).sort_values("cell_id", ignore_index=True)
    patients = store.read_table(paths.patients_table).sort_values("patient_id", ignore_index=True)
    return cells, patients


def assert_same_tables(
    found: tuple[pd.DataFrame, pd.DataFrame], expected: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    """Every cell exactly once with the same probability (1e-5), and the same patient table."""
    cells, patients = found
    cells_ref, patients_ref = expected
    assert cells["cell_id"].is_unique and len(cells) == len(cells_ref)
    assert cells["cell_id"].tolist() == cells_ref["cell_id"].tolist()
    pd.testing.assert_series_equal(
        cells["probability"], cells_ref["probability"], check_exact=False, atol=1e-5, rtol=0
    )
    pd.testing.assert_frame_equal(
        cells.drop(columns="probability"), cells_ref.drop(columns="probability")
    )
    pd.testing.assert_frame_equal(patients, patients_ref, check_exact=False, atol=1e-5, rtol=0)


@pytest.fixture(autouse=True, scope="session")
def prefect_api():
    """One Prefect test server; child processes (flows, Dask workers) reach it through the environment."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    previous = os.environ.get("PREFECT_API_URL")
    from tests.conftest import drain_prefect_events

    with prefect_test_harness(server_startup_timeout=60):
        os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()
        drain_prefect_events()
        yield PREFECT_API_URL.value()
        drain_prefect_events()
    # Restore rather than delete: another directory's harness may still be active in this session.
    if previous is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = previous


@pytest.fixture(scope="session")
def cluster(prefect_api, tmp_path_factory):
    """A 2-worker LocalCluster (one thread each), as the CLI starts by default."""
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        local_directory=str(tmp_path_factory.mktemp("dask")),
        # No statistical profiler, as the CLI's: on Python 3.11 its sampling can deadlock a worker
        # that starts a thread (CPython gh-106883).
        config={"distributed.worker.profile.enabled": False},
    )
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def client(cluster):
    from distributed import Client

    with Client(cluster.scheduler_address, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def cohort(lmu_cells, tmp_path_factory) -> Path:
    """80 real cells of three patients in patient layout."""
    from tests.corpus import compose_patient_cohort

    return compose_patient_cohort(
        lmu_cells, tmp_path_factory.mktemp("cohort") / "cohort", COHORT_PLAN
    )


@pytest.fixture(scope="session")
def training_cohort(lmu_cells, tmp_path_factory) -> Path:
    """60 labelled real cells of two patients: enough for a seconds-long retrain."""
    from tests.corpus import compose_patient_cohort

    return compose_patient_cohort(
        lmu_cells,
        tmp_path_factory.mktemp("training") / "training",
        {"T1": (15, 15), "T2": (10, 20)},
    )


@pytest.fixture(scope="session")
def clean_run(cohort, cluster, tiny_model_file, tmp_path_factory):
    """An undisturbed scoring run of the cohort: (store, run_id, (cells, patients))."""
    from prefect_dask import DaskTaskRunner

    from flows.parameters import ScoreOptions
    from flows.score import score_smears

    store = tmp_path_factory.mktemp("clean") / "store"
    result = score_smears.with_options(
        task_runner=DaskTaskRunner(address=cluster.scheduler_address)
    )(
        source=str(cohort),
        store=str(store),
        options=ScoreOptions(model=str(tiny_model_file), run_id="clean", **SCORE_PARAMS),
    )
    assert not result["already_complete"]
    return store, "clean", read_tables(Store(str(store)), "clean")


# Fake credentials every flow process of these tests runs with: the moto server accepts any, and
# the security test searches every output for them.
FAKE_SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKERELIABILITY7",
    "AWS_SECRET_ACCESS_KEY": "fAkE+sEcReT/reliability0123456789abcdefXYZ",
    "PREFECT_API_KEY": "pnu_fakeReliabilityApiKey0123456789abcdef",
}

# A flow process: retrain_and_evaluate on an existing Dask scheduler; parameters as JSON.
RETRAIN_PROCESS = """
import json, sys
from prefect_dask import DaskTaskRunner
from flows.parameters import RetrainOptions, nest_options
from flows.retrain import retrain_and_evaluate
result = retrain_and_evaluate.with_options(task_runner=DaskTaskRunner(address=sys.argv[1]))(
    **nest_options(json.loads(sys.argv[2]), RetrainOptions))
print("RESULT", json.dumps({k: result[k] for k in ("version", "promoted", "reason")}))
"""
RETRAIN_PARAMS = {
    "epochs": 2,
    "patience": 1,
    "backbone_weights": "none",
    "image_size": 32,
    "augment_views": 0,
}


def start_retrain_process(address: str, log: Path, **parameters) -> subprocess.Popen:
    return start_python(
        RETRAIN_PROCESS,
        address,
        json.dumps({**RETRAIN_PARAMS, **parameters}),
        log=log,
        env=FAKE_SECRETS,
    )


def result_line(log: Path) -> dict:
    """The RESULT line a finished flow process printed."""
    lines = [line for line in log.read_text().splitlines() if line.startswith("RESULT ")]
    assert lines, log.read_text()[-4000:]
    return json.loads(lines[-1][len("RESULT ") :])
