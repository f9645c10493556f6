"""GPUs on the Dask cluster: which workers have one, and tasks that run the model asking for one."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator

__all__ = ["GPU_RESOURCE", "cluster_has_gpus", "model_tasks", "visible_gpus"]

#: The Dask worker resource a GPU worker advertises (``dask worker --resources GPU=1``) and a
#: model task requests: one unit per task, so each GPU runs one model task at a time.
GPU_RESOURCE = "GPU"


def visible_gpus() -> list[str]:
    """The GPU ids this host gives its processes: ``CUDA_VISIBLE_DEVICES`` when set (empty or -1:
    none), else the indices ``nvidia-smi`` lists; none without an NVIDIA driver."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [
            d.strip()
            for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",")
            if d.strip() not in ("", "-1")
        ]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listed.splitlines() if line.strip()]


def cluster_has_gpus() -> bool:
    """Whether the running flow's Dask cluster has a worker advertising :data:`GPU_RESOURCE`.

    False outside a flow, or under a task runner other than Dask's.
    """
    from prefect.context import FlowRunContext
    from prefect_dask import DaskTaskRunner

    context = FlowRunContext.get()
    runner = context.task_runner if context else None
    if not isinstance(runner, DaskTaskRunner):
        return False
    workers = runner.client.scheduler_info(n_workers=-1)["workers"].values()
    return any(worker.get("resources", {}).get(GPU_RESOURCE, 0) > 0 for worker in workers)


@contextlib.contextmanager
def model_tasks(gpus: bool | None = None) -> Iterator[None]:
    """Tasks submitted inside run the model: on a cluster with GPU workers each asks for one GPU,
    so it runs on a GPU worker and never on a CPU-only one (decoding still runs anywhere). On a
    cluster without GPU workers nothing is asked, or the tasks would wait forever.

    Args:
        gpus: :func:`cluster_has_gpus` when the caller already asked (a loop of submissions);
            None asks the cluster.
    """
    if not (cluster_has_gpus() if gpus is None else gpus):
        yield
        return
    import dask

    with dask.annotate(resources={GPU_RESOURCE: 1}):
        yield
