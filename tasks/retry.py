"""Retry policy: transient I/O is retried, wrong input never is."""

from __future__ import annotations

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from aml_model.errors import AmlSmearError

__all__ = ["RETRIES", "RETRY_DELAY_SECONDS", "retry_transient_errors", "store_task"]

# Two more tries, two seconds apart: enough for a dropped connection or S3 throttling.
RETRIES = 2
RETRY_DELAY_SECONDS = 2


def retry_transient_errors(task: Task, task_run: TaskRun, state: State) -> bool:
    """Prefect ``retry_condition_fn``: retry unless the failure is a validation error."""
    try:
        state.result()
    # PermissionError: access denied does not heal by retrying (throttling and 5xx are retried).
    except (AmlSmearError, ValueError, TypeError, KeyError, FileNotFoundError, PermissionError):
        return False
    except Exception:
        return True
    return False


def store_task(name: str):
    """The decorator of every task that reads or writes the store: no result cache (the store is the
    record: shard markers make reruns skip finished work), and transient faults retried."""
    return task(
        name=name,
        cache_policy=NO_CACHE,
        retries=RETRIES,
        retry_delay_seconds=RETRY_DELAY_SECONDS,
        retry_condition_fn=retry_transient_errors,
    )
