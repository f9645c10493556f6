"""The retry policy: transient I/O is retried, wrong input never is; checked on real Prefect task runs."""

from __future__ import annotations

import pytest
from prefect import flow, task
from prefect.states import Completed, Failed

from aml_model.errors import AmlSmearError, TrainingCollapsedError
from tasks.retry import retry_transient_errors

WRONG_INPUT = [
    AmlSmearError("bad cell"),
    TrainingCollapsedError("flat head"),
    ValueError("threshold 2"),
    TypeError("not a str"),
    KeyError("label"),
    FileNotFoundError("no such source"),
    PermissionError("access denied"),
]
TRANSIENT = [
    OSError("503 Slow Down"),
    ConnectionResetError("peer reset"),
    TimeoutError("read timed out"),
    RuntimeError("worker lost"),
]


@pytest.mark.parametrize("error", WRONG_INPUT, ids=lambda e: type(e).__name__)
def test_wrong_input_is_not_retried(error):
    assert retry_transient_errors(None, None, Failed(data=error)) is False


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: type(e).__name__)
def test_transient_failures_are_retried(error):
    assert retry_transient_errors(None, None, Failed(data=error)) is True


def test_a_completed_state_is_not_retried():
    assert retry_transient_errors(None, None, Completed(data=1)) is False


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    from tests.conftest import drain_prefect_events

    with prefect_test_harness(server_startup_timeout=60):
        drain_prefect_events()
        yield
        drain_prefect_events()


def test_a_task_with_the_policy_retries_io_and_stops_at_wrong_input(prefect_api):
    attempts: list[str] = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_transient_errors)
    def flaky(kind: str) -> str:
        attempts.append(kind)
        if kind == "io" and attempts.count("io") < 3:
            raise ConnectionResetError("peer reset")
        if kind == "input":
            raise ValueError("image of shape (3, 3) does not fit the model input")
        return kind

    @flow
    def both() -> tuple[str, str]:
        return flaky("io"), flaky.submit("input").result(raise_on_failure=False)

    io, wrong = both()
    assert io == "io" and attempts.count("io") == 3, "two retries, then success"
    assert isinstance(wrong, ValueError) and attempts.count("input") == 1, "wrong input runs once"


def test_every_store_task_carries_the_retry_policy_and_no_result_cache():
    from prefect.cache_policies import NO_CACHE

    from tasks.calibration import score_labelled_cells
    from tasks.explain import explain_patient
    from tasks.ingest import ingest_shard, write_ingest_tables
    from tasks.listing import list_inputs
    from tasks.predict import score_shard
    from tasks.report import write_reports
    from tasks.summarise import write_scored_tables

    store_tasks = [
        score_labelled_cells,
        list_inputs,
        explain_patient,
        ingest_shard,
        write_ingest_tables,
        score_shard,
        write_reports,
        write_scored_tables,
    ]
    for store_task in store_tasks:
        # list_inputs once retried bad input: listing a source that does not exist is not transient.
        assert store_task.retry_condition_fn is retry_transient_errors, store_task.name
        assert (store_task.retries, store_task.retry_delay_seconds) == (2, 2), store_task.name
        assert store_task.cache_policy is NO_CACHE, store_task.name
    assert len({t.name for t in store_tasks}) == len(store_tasks)
