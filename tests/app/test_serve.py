"""The deployed flows' retry policy, run under Prefect's test harness: what is retried and what is not."""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.task_runners import ThreadPoolTaskRunner

from app.serve import NIGHTLY_RETRAIN, dask_runner_from_environment, deployed_flow
from tasks.events import NIGHTLY_FAILED
from tests.flows.prefect_events import read_events


def _flow_run(state):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id)


def _nightly():
    # The deployed nightly with its settings, without a Dask cluster to start.
    flow = deployed_flow(
        NIGHTLY_RETRAIN, dask_runner_from_environment({"AML_SMEAR_DASK_WORKERS": "1"})
    )
    assert flow.retries == NIGHTLY_RETRAIN.retries == 0
    return flow.with_options(task_runner=ThreadPoolTaskRunner())


def test_invalid_parameters_fail_once_and_are_not_retried(tmp_path):
    state = _nightly()(sources=[], store=str(tmp_path / "store"), return_state=True)
    assert state.is_failed() and "sources" in state.message
    run = _flow_run(state)
    assert run.run_count == 0 and run.state.name == "Failed"  # never Running, so never retried


def test_a_failure_after_the_run_started_fails_at_once_with_its_reason(tmp_path):
    # No flow retry (app/serve.py: a deployment concurrency limit drops Prefect 3.9's flow retries).
    state = _nightly()(
        sources=[str(tmp_path / "no-such-source")], store=str(tmp_path / "store"), return_state=True
    )
    reason = f"source {tmp_path / 'no-such-source'} does not exist"
    assert state.is_failed() and state.message == reason, "the state message is the one-line reason"
    run = _flow_run(state)
    assert run.run_count == 1 and run.state.name == "Failed" and run.state.message == reason
    assert not (tmp_path / "store").exists()
    # Failed for good: one aml-smear.nightly.failed, with the run's reason.
    events = read_events(NIGHTLY_FAILED, resource_id=f"prefect.flow-run.{run.id}")
    assert len(events) == 1 and events[0].payload["run_count"] == run.run_count
    assert events[0].payload["message"] == reason and events[0].payload["state"] == "Failed"
