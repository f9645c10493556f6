"""The state of a run in the store: absent, incomplete or complete."""

from __future__ import annotations

from dataclasses import dataclass

from aml_model.errors import AmlSmearError
from tasks import storage

__all__ = ["IncompleteRunError", "RunConflictError", "RunState", "require_complete", "run_state"]


class IncompleteRunError(AmlSmearError, RuntimeError):
    """A run has no ``_SUCCESS``: its tables must not be read as final."""


class RunConflictError(AmlSmearError, ValueError):
    """A run id already holds a run of different inputs."""


@dataclass(frozen=True)
class RunState:
    plan: dict | None
    complete: bool


def run_state(paths: storage.RunPaths, storage_options: dict | None = None) -> RunState:
    plan = storage.read_json(paths.plan, storage_options) if storage.exists(paths.plan, storage_options) else None
    return RunState(plan=plan, complete=storage.exists(paths.success, storage_options))


def require_complete(paths: storage.RunPaths, storage_options: dict | None = None) -> None:
    """Raise unless the run finished: readers must not take a partial run for a result."""
    if not storage.exists(paths.success, storage_options):
        message = (f"run {paths.run_id} in {paths.store} is incomplete (no _SUCCESS): it was interrupted "
                   f"or is still running; rerun it with the same --run-id to complete it")
        raise IncompleteRunError(message)
