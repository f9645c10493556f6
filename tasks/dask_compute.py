"""Where the table and report tasks compute: the flow's Dask cluster when there is one, else threads.

The flow calls these tasks in its own process, where the DaskTaskRunner's client is; their graphs
then run on the flow's cluster and only small results (receipts, counts, a row per patient) come
back. Without a Dask client (the thread-pool task runner, a test) they run on threads here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["SHUFFLE_FAN_IN", "compute", "on_cluster", "shuffle_partitions"]

#: Parts of a run's table (one per shard) whose rows one output partition of a shuffle by patient
#: gathers, where the shuffled rows are small (a few columns per cell, no pixels): the scheduler
#: then tracks that many times fewer output partitions and the tasks downstream of them.
SHUFFLE_FAN_IN = 16


def shuffle_partitions(n_parts: int) -> int:
    """Output partitions of a shuffle of ``n_parts`` small parts: one per :data:`SHUFFLE_FAN_IN`."""
    return max(1, -(-n_parts // SHUFFLE_FAN_IN))


@contextlib.contextmanager
def on_cluster() -> Iterator[tuple[object, str]]:
    """Where to compute, and how to shuffle there: the Dask cluster of this process's client (the
    flow's DaskTaskRunner, where the flow calls these tasks; a worker's own), shuffling peer to
    peer; else threads of this process, shuffling through tasks, which need no workers."""
    import dask

    # The tables keep pandas' own types; Dask would turn text columns into pyarrow strings.
    with dask.config.set({"dataframe.convert-string": False}):
        try:
            from distributed import get_client

            client = get_client()
        except (ImportError, ValueError):
            yield "threads", "tasks"
            return
        yield client, "p2p"


def compute(scheduler, *collections) -> tuple:
    """The results of ``collections`` (Dask collections or delayed values) computed on
    ``scheduler``, as :func:`on_cluster` gave it."""
    import dask

    if isinstance(scheduler, str):
        return dask.compute(*collections, scheduler=scheduler)
    return tuple(scheduler.compute(list(collections), sync=True))
