"""S3 faults during a scoring run, injected by a proxy in front of the moto server."""

from __future__ import annotations

import re
import threading
import time

import pytest
import s3fs
from click.testing import CliRunner
from prefect_dask import DaskTaskRunner

from app.cli import cli
from flows.parameters import ScoreOptions
from flows.score import score_smears
from tasks.store import Store
from tests.reliability.conftest import SCORE_PARAMS, assert_same_tables, read_tables
from tests.reliability.s3proxy import FaultProxy

pytestmark = pytest.mark.reliability


def test_transient_s3_faults_during_writes_are_retried_and_the_run_completes(
    cohort, cluster, clean_run, s3_bucket, s3_endpoint, tiny_model_file
):
    """Every third write is answered 503 SlowDown, and the server goes away for 1.5 s mid-scoring."""
    bucket, options = s3_bucket
    store = f"s3://{bucket}/store"
    state = {"puts": 0, "outage_until": None}
    lock = threading.Lock()

    def fault(method, path):
        with lock:
            now = time.monotonic()
            if method == "PUT" and "/probabilities/" in path and state["outage_until"] is None:
                state["outage_until"] = now + 1.5
            if state["outage_until"] is not None and now < state["outage_until"]:
                return "reset"  # every request, as if the server had stopped
            if method == "PUT" and "/store/runs/" in path:
                state["puts"] += 1
                if state["puts"] % 3 == 0:
                    return ("status", 503, "SlowDown")
        return None

    with FaultProxy(s3_endpoint) as proxy:
        proxy.fault = fault
        result = score_smears.with_options(
            task_runner=DaskTaskRunner(address=cluster.scheduler_address)
        )(
            source=str(cohort),
            store=store,
            s3_endpoint_url=proxy.url,
            options=ScoreOptions(model=str(tiny_model_file), run_id="flaky", **SCORE_PARAMS),
        )
    assert proxy.injected["status"] >= 10 and proxy.injected["reset"] >= 1, proxy.injected
    assert not result["already_complete"]
    assert_same_tables(read_tables(Store(store, options), "flaky"), clean_run[2])


def test_permanent_s3_fault_fails_the_run_with_a_clear_message_and_no_success(
    cohort, cluster, s3_bucket, s3_endpoint, tiny_model_file
):
    """The store refuses every write of the run (403): the command fails fast, saying where."""
    bucket, options = s3_bucket
    store = f"s3://{bucket}/store"
    with FaultProxy(s3_endpoint) as proxy:
        proxy.fault = lambda method, path: (
            ("status", 403, "AccessDenied")
            if method == "PUT" and "/store/runs/denied/" in path
            else None
        )
        result = CliRunner().invoke(
            cli,
            [
                "score",
                str(cohort),
                "--store",
                store,
                "--model",
                str(tiny_model_file),
                "--run-id",
                "denied",
                "--s3-endpoint-url",
                proxy.url,
                "--scheduler",
                cluster.scheduler_address,
            ],
        )
    assert result.exit_code == 1, result.output
    # The first write of a scoring is its settings (score.json), before the ingest plan.
    assert re.search(
        rf"error: cannot write {re.escape(store)}/runs/denied/scores/[^/ ]+/score\.json: ",
        result.output,
    ), result.output
    assert proxy.injected["status"] >= 1
    fs = s3fs.S3FileSystem(**options)
    fs.invalidate_cache()
    assert not fs.exists(f"{bucket}/store/runs/denied/_SUCCESS")
