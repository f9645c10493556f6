"""The application layer's tests run flows as the flows' own tests do: the same Prefect test harness
and Dask cluster fixtures."""

from tests.flows.conftest import dask_cluster, events_reach_this_server, prefect_api, task_runner

__all__ = ["dask_cluster", "events_reach_this_server", "prefect_api", "task_runner"]
