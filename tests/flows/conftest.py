"""Flow tests run against Prefect's test harness and one real 2-worker Dask LocalCluster
(tests/prefect_harness.py)."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _prefect_first(prefect_api):
    """The harness starts before any other session fixture (tests/prefect_harness.py)."""


@pytest.fixture(autouse=True)
def _events_here(events_reach_this_server):
    """Each test's events go to this session's harness."""
