"""The Dask task runner every flow uses: a LocalCluster sized to the machine, or a scheduler address."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator

import dask
from prefect import Flow
from prefect.context import FlowRunContext
from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS
from prefect_dask import DaskTaskRunner

from flows.logs import debug_requested
from tasks.devices import GPU_RESOURCE, visible_gpus

__all__ = [
    "DASK_LOG_LENGTH",
    "DASK_LOG_LENGTH_ENV",
    "WORKER_PROFILE_ENV",
    "dask_task_runner",
    "gpu_cluster_spec",
    "in_order",
    "local_cluster_kwargs",
    "on_this_cluster",
    "quiet_dask_logs",
    "shards_in_flight",
    "shared_prefect_api",
]

#: How many recent messages, transitions and events each Dask object keeps for debugging (Dask's
#: ``distributed.admin.low-level-log-length``, 1,000 by default), in this process and the Dask
#: processes started from it: a user's own setting wins. Each batched stream keeps its last
#: messages whole, and a task's message carries its arguments and Prefect's context, tens of KB;
#: the scheduler's stream to each worker kept 1,000 of them, and the scheduler grew by about 65 MiB
#: over the first 782 shards of a 200,000-cell night (infra/README.md, "Scale").
DASK_LOG_LENGTH = 100
dask.config.update_defaults({"distributed": {"admin": {"low-level-log-length": DASK_LOG_LENGTH}}})
DASK_LOG_LENGTH_ENV = "DASK_DISTRIBUTED__ADMIN__LOW_LEVEL_LOG_LENGTH"

#: Shards a flow keeps submitted and unfinished per task slot of its cluster
#: (:func:`shards_in_flight`): enough that a slot finds the next shard waiting when it finishes
#: one, while the flow collects results and submits more.
SHARDS_PER_SLOT = 4


@contextlib.contextmanager
def shared_prefect_api() -> Iterator[str | None]:
    """Make sure Dask worker processes report to the same Prefect API as the flow.

    Without a configured ``PREFECT_API_URL`` Prefect starts a temporary server inside each
    process that needs one, so every Dask worker would record its task runs in a database of
    its own. This starts one temporary server and exports its URL before the cluster starts,
    so the workers inherit it. With an API configured it does nothing.
    """
    if PREFECT_API_URL.value():
        yield PREFECT_API_URL.value()
        return
    # Private to Prefect, and what its own test harness uses: pinned to one minor release
    # (pyproject.toml) and tested there (tests/flows/test_runner.py).
    from prefect.server.api.server import SubprocessASGIServer

    # Offline, the server's telemetry only logs errors (and can lock its SQLite database).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    server = SubprocessASGIServer()
    # The server stops itself at exit, after the last log records have been sent to it. On a
    # busy machine its start can take longer than Prefect's default wait of 20 s.
    server.start(timeout=max(120, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        yield server.api_url
    finally:
        del os.environ["PREFECT_API_URL"]


def in_order(position: int) -> contextlib.AbstractContextManager:
    """Dask runs tasks submitted inside this ahead of those of later positions, where it has the choice.

    Without it, tasks submitted within Dask's FIFO window (100 ms) tie, and a worker may run all
    tasks without inputs (decoding) before any that waits on one (scoring). Other task runners
    ignore it.
    """
    import dask

    return dask.annotate(priority=-position)


def on_this_cluster(subflow: Flow) -> Flow:
    """``subflow`` with a task runner on the Dask cluster of the flow that calls it.

    A subflow runs on its own decorator's task runner (Prefect's thread pool in the flow
    process), not on its parent's; this points it at the parent's cluster instead, so that its
    tasks run on the same workers. Outside a flow, or under another task runner, ``subflow``
    is returned as it is.
    """
    context = FlowRunContext.get()
    runner = context.task_runner if context else None
    if not isinstance(runner, DaskTaskRunner):
        return subflow
    return subflow.with_options(task_runner=DaskTaskRunner(address=runner.client.scheduler.address))


def shards_in_flight() -> int:
    """How many shards a flow keeps submitted and unfinished (:func:`flows.progress.windowed_results`):
    :data:`SHARDS_PER_SLOT` per thread of its Dask cluster's workers as they are now, or per CPU core
    of this machine under another task runner."""
    context = FlowRunContext.get()
    runner = context.task_runner if context else None
    if isinstance(runner, DaskTaskRunner):
        slots = sum(runner.client.nthreads().values())
    else:
        slots = os.cpu_count() or 1
    return SHARDS_PER_SLOT * max(1, slots)


class _WorkerExitFilter(logging.Filter):
    """Drops the nanny's warning that it killed a worker process still exiting when the cluster closed.

    At the end of a run each worker process has finished its tasks and sent their results, and
    then exits (Prefect's log and event queues flush on the way out); a nanny waits 4 s for that and
    kills it after, which on a busy machine it often does. A worker killed while it runs a task
    is another message ("Restarting worker"), which still shows.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Worker process still alive after")


def quiet_dask_logs() -> None:
    """Keep Dask's per-worker start/stop chatter out of the terminal; warnings still show.

    With ``aml-smear --debug`` (:func:`flows.logs.debug_requested`) Dask logs as it would.
    """
    if debug_requested():
        return
    for name in ("distributed", "distributed.nanny", "distributed.scheduler", "distributed.core"):
        logging.getLogger(name).setLevel(logging.WARNING)
    nanny = logging.getLogger("distributed.nanny")
    if not any(isinstance(f, _WorkerExitFilter) for f in nanny.filters):
        nanny.addFilter(_WorkerExitFilter())


def dask_task_runner(workers: int | None = None, scheduler: str | None = None) -> DaskTaskRunner:
    """Build a DaskTaskRunner.

    Args:
        workers: processes of a new local cluster, one thread each; default one per CPU core.
            TensorFlow and Pillow release the GIL but a single thread per process keeps each
            worker's model and memory predictable. On a host with GPUs (:func:`tasks.devices.visible_gpus`)
            there is one worker per GPU, pinned to it and advertising it, plus CPU-only workers
            up to ``workers`` (:func:`gpu_cluster_spec`).
        scheduler: address of an existing Dask scheduler (``tcp://host:8786``); overrides
            ``workers``.
    """
    if workers is not None and scheduler is not None:
        message = (
            "give either workers (a new LocalCluster) or scheduler (an existing cluster), not both"
        )
        raise ValueError(message)
    if scheduler:
        return DaskTaskRunner(address=scheduler)
    n_workers = workers or os.cpu_count() or 1
    if n_workers < 1:
        message = f"workers={n_workers} is invalid: expected at least 1"
        raise ValueError(message)
    gpus = visible_gpus()
    if gpus:
        return DaskTaskRunner(
            cluster_class="distributed.SpecCluster",
            cluster_kwargs=gpu_cluster_spec(n_workers, gpus),
        )
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster", cluster_kwargs=local_cluster_kwargs(n_workers)
    )


#: Where workers started here keep their spill files and locks.
_WORKER_DIRECTORY = os.path.join(tempfile.gettempdir(), "aml-smear-dask")
#: The scheduler's HTTP server (health, metrics; the dashboard where bokeh is installed). It starts
#: even without a dashboard, on port 8787 unless told otherwise, so a second run on the machine
#: warned "Port 8787 is already in use": any free port, on the loopback only.
_HTTP_ADDRESS = "127.0.0.1:0"


#: Set to True to turn on the workers' statistical profiler (Dask's setting
#: ``distributed.worker.profile.enabled``) in the workers started here; it is off otherwise.
#: It samples every thread's stack every 10 ms for the dashboard and ``Client.profile``, and keeps
#: a profile per second, as many as the history length (:data:`DASK_LOG_LENGTH`; Dask's 1,000): a
#: scoring worker grew by about 0.5 MiB a second, 200 MiB over a 200,000-cell night with Dask's
#: length (infra/README.md, "Scale"), and the sampling costs CPU. On Python 3.11 its sampling can
#: deadlock a worker that starts a thread meanwhile (CPython gh-106883; see tasks.ingest).
WORKER_PROFILE_ENV = "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"


def _worker_profiling() -> bool:
    """Whether workers started here run Dask's statistical profiler (:data:`WORKER_PROFILE_ENV`)."""
    return os.environ.get(WORKER_PROFILE_ENV, "False").strip().lower() in ("1", "true", "yes")


def _worker_config() -> dict:
    """Dask settings that a nanny hands its worker process over the flow's own, which the worker
    reads after its environment. Dotted: a nanny merges its settings into the flow's shallowly, and
    its worker applies them in order, this after the flow's."""
    return {"distributed.worker.profile.enabled": _worker_profiling()}


def _worker_env(threads: int) -> dict[str, str]:
    """A worker's environment, ``threads`` its share of the machine's cores."""
    return {
        # Read by a worker started without a nanny (``dask worker --no-nanny``); a nanny's worker
        # takes :func:`_worker_config` and this process's settings.
        WORKER_PROFILE_ENV: str(_worker_profiling()),
        DASK_LOG_LENGTH_ENV: str(dask.config.get("distributed.admin.low-level-log-length")),
        "OMP_NUM_THREADS": str(threads),
        # Twice its share, up to the machine's cores: a worker is often alone in running the model
        # (the others decode, render or have no shard left), and its model then uses their idle
        # cores; when all score, the threads share the cores. On 2 cores, 2 workers scored 1,400 cells
        # end to end at 37.7 cells/s with 2 threads each and 34.9 with 1 (benchmarks/README.md).
        "TF_NUM_INTRAOP_THREADS": str(min(os.cpu_count() or 1, 2 * threads)),
        "TF_NUM_INTEROP_THREADS": "1",
        # TensorFlow's C++ errors and warnings ("failed call to cuInit" without a GPU) are
        # noise in the workers' output, unless TF_CPP_MIN_LOG_LEVEL asks for them.
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"),
    }


def local_cluster_kwargs(n_workers: int) -> dict:
    """LocalCluster settings: single-threaded task slots, each worker's TensorFlow sized to its cores.

    Dask starts workers with OMP_NUM_THREADS=1, which would hold TensorFlow to one core even
    when one worker has the whole machine; the machine's cores are shared out instead, and each
    worker's TensorFlow may use twice its share (:func:`_worker_env`).
    """
    return {
        "n_workers": n_workers,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": _HTTP_ADDRESS,
        "local_directory": _WORKER_DIRECTORY,
        "env": _worker_env(max(1, (os.cpu_count() or 1) // n_workers)),
        "config": _worker_config(),
    }


def gpu_cluster_spec(n_workers: int, gpus: list[str]) -> dict:
    """``SpecCluster`` settings for a host with GPUs: a mixed CPU/GPU cluster on one machine.

    One worker per GPU, which sees only its device (``CUDA_VISIBLE_DEVICES``) and advertises it
    as the ``GPU`` resource that model tasks ask for (:func:`tasks.devices.model_tasks`); then
    CPU-only workers, which see no GPU, up to ``n_workers`` in all, for decoding. Each is a
    single-threaded Nanny process with the host's cores shared out, as :func:`local_cluster_kwargs`.

    Args:
        n_workers: workers in all; at least one per GPU is started whatever it says.
        gpus: device ids, e.g. ["0", "1"].
    """
    from distributed import Nanny, Scheduler

    total = max(n_workers, len(gpus))
    threads = max(1, (os.cpu_count() or 1) // total)
    options = {"nthreads": 1, "local_directory": _WORKER_DIRECTORY, "config": _worker_config()}
    workers = {
        f"gpu-{gpu}": {
            "cls": Nanny,
            "options": {
                **options,
                "resources": {GPU_RESOURCE: 1},
                "env": {**_worker_env(threads), "CUDA_VISIBLE_DEVICES": gpu},
            },
        }
        for gpu in gpus
    }
    workers |= {
        f"cpu-{i}": {
            "cls": Nanny,
            "options": {**options, "env": {**_worker_env(threads), "CUDA_VISIBLE_DEVICES": ""}},
        }
        for i in range(total - len(gpus))
    }
    return {
        "scheduler": {"cls": Scheduler, "options": {"dashboard_address": _HTTP_ADDRESS}},
        "workers": workers,
    }
