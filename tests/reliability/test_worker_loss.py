"""A Dask worker process is SIGKILLed while score tasks run; the flow completes with the same tables."""

from __future__ import annotations

import os
import signal
import subprocess
import threading

import pytest
from prefect_dask import DaskTaskRunner

from flows.parameters import ScoreOptions
from flows.score import score_smears
from tasks.store import Store
from tests.reliability.conftest import (
    PROJECT_ROOT,
    SCORE_PARAMS,
    SCORE_SHARDS,
    assert_same_tables,
    read_tables,
    score_markers,
    wait_for,
)

pytestmark = pytest.mark.reliability


def score_while_killing_a_worker(address: str, source, store, model, run_id: str) -> dict:
    """Run score-smears on ``address`` and SIGKILL one worker process once it is scoring.

    Returns what the killer saw: the victim's pid and address, and the score markers
    written before the kill.
    """
    from distributed import Client

    seen: dict = {}
    with Client(address, timeout=30) as client:
        pids = client.run(os.getpid)
        assert len(pids) == 2
        victim = sorted(pids)[0]

        def killer():
            def victim_is_scoring():
                done = score_markers(store, run_id)
                if len(done) < 2:
                    return False
                # Score markers exist, so ingest is over: whatever the victim runs now is a score task.
                return len(done) if client.processing(workers=[victim]).get(victim) else False

            try:
                seen["markers"] = wait_for(
                    victim_is_scoring, 120, "a worker to be running score tasks", 0.01
                )
                os.kill(pids[victim], signal.SIGKILL)
                seen["killed"] = pids[victim]
            except BaseException as exc:  # reported by the test thread
                seen["error"] = exc

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        result = score_smears.with_options(task_runner=DaskTaskRunner(address=address))(
            source=str(source),
            store=str(store),
            options=ScoreOptions(model=str(model), run_id=run_id, **SCORE_PARAMS),
        )
        thread.join(timeout=30)
        assert "error" not in seen, seen.get("error")
        assert seen.get("killed"), "no worker was killed: the run ended first"
        # The nanny restarts the killed worker; later tests get a full cluster back. A restarted
        # worker imports TensorFlow again: on two busy cores (the other session's tests beside
        # this one) that took over a minute once.
        new = wait_for(
            lambda: (p := client.run(os.getpid)) and len(p) == 2 and p,
            180,
            "the worker to come back",
        )
        assert seen["killed"] not in new.values()
    seen["result"] = result
    return seen


def check_recovered(seen, store, run_id, clean_run):
    assert seen["markers"] < SCORE_SHARDS, "the kill came after the last shard"
    assert not seen["result"]["already_complete"]
    assert len(score_markers(store, run_id)) == SCORE_SHARDS
    assert_same_tables(read_tables(Store(str(store)), run_id), clean_run[2])


def test_local_cluster_worker_killed_mid_scoring(
    cohort, cluster, clean_run, tiny_model_file, tmp_path
):
    store = tmp_path / "store"
    seen = score_while_killing_a_worker(
        cluster.scheduler_address, cohort, store, tiny_model_file, "worker-loss"
    )
    check_recovered(seen, store, "worker-loss", clean_run)


@pytest.fixture
def dask_processes(prefect_api, tmp_path):
    """A scheduler and two workers started as ``dask scheduler`` / ``dask worker`` processes."""
    dask = os.path.join(os.path.dirname(os.sys.executable), "dask")
    scheduler_file = tmp_path / "scheduler.json"
    common = dict(
        cwd=PROJECT_ROOT,
        env=dict(os.environ),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "dask.log", "ab"),
    )  # noqa: SIM115
    processes = [
        subprocess.Popen(
            [
                dask,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(scheduler_file),
            ],
            **common,
        )
    ]
    try:
        wait_for(scheduler_file.exists, 60, "the dask scheduler")
        processes.append(
            subprocess.Popen(
                [
                    dask,
                    "worker",
                    "--scheduler-file",
                    str(scheduler_file),
                    "--nworkers",
                    "2",
                    "--nthreads",
                    "1",
                    "--host",
                    "127.0.0.1",
                    "--no-dashboard",
                    "--local-directory",
                    str(tmp_path / "dask-worker"),
                ],
                **common,
            )
        )
        import json

        from distributed import Client

        address = json.loads(scheduler_file.read_text())["address"]
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for process in reversed(processes):
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            except ProcessLookupError:
                pass


def test_separate_scheduler_and_worker_processes_worker_killed(
    cohort, dask_processes, clean_run, tiny_model_file, tmp_path
):
    store = tmp_path / "store"
    seen = score_while_killing_a_worker(
        dask_processes, cohort, store, tiny_model_file, "worker-loss-cli"
    )
    check_recovered(seen, store, "worker-loss-cli", clean_run)
