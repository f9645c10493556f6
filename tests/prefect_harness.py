"""Prefect's test harness and one real 2-worker Dask LocalCluster, for the tests of flows/ and app/.

A plugin (tests/conftest.py's ``pytest_plugins``), so that each fixture is defined once: a
session fixture defined in two conftest files would run twice in one process, two harnesses
nested. Each folder that needs them turns them on in its conftest (autouse fixtures that request them).
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def prefect_api():
    # Prefect's first full import configures logging and closes the handlers already there; absl's
    # (TensorFlow's) holds pytest's capture stream, so importing Prefect after TensorFlow (a CLI
    # test whose model fixture trained first) would close it. Import Prefect first.
    import prefect.main  # noqa: F401
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from tests.conftest import drain_prefect_events

    with prefect_test_harness(server_startup_timeout=60):
        # Dask worker processes inherit the environment: point them at the harness too.
        os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()
        drain_prefect_events()
        yield PREFECT_API_URL.value()
        drain_prefect_events()
        os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture(scope="session")
def dask_cluster(prefect_api, tmp_path_factory):
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        local_directory=str(tmp_path_factory.mktemp("dask")),
        # No statistical profiler, as in the flows' own clusters (flows.runner): on Python 3.11 its
        # sampling can deadlock a worker that starts a thread (CPython gh-106883).
        config={"distributed.worker.profile.enabled": False},
    )
    yield cluster
    cluster.close()


@pytest.fixture
def task_runner(dask_cluster):
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(address=dask_cluster.scheduler_address)


@pytest.fixture
def events_reach_this_server(prefect_api):
    """Each test's events go to the server it reads them from, whatever ran before in this process."""
    from tests.conftest import drain_prefect_events

    drain_prefect_events()
    yield
