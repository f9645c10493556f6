"""Retry policy: transient I/O is retried, wrong input never is."""

from __future__ import annotations

from prefect import Task
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from aml_model.errors import AmlSmearError

__all__ = ["retry_transient_errors"]


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
