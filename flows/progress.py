"""Collect task results as they finish, with a Prefect progress artifact and rate-limited log lines."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture, as_completed

from tasks.throttle import Throttle

__all__ = ["results_with_progress"]


def results_with_progress(
    futures: Sequence[PrefectFuture],
    key: str,
    description: str,
    line: Callable[[float, int], str] | None = None,
    throttle: Throttle | None = None,
) -> Iterator[tuple[float, Any]]:
    """Yield (percent of tasks done, result) as each task finishes.

    The artifact ``key`` and, given ``line`` (called with the percent and the number of tasks
    done, after the caller has taken the result), a log line follow along, both rate-limited by
    ``throttle``; the last task's update always shows.
    """
    throttle = throttle or Throttle()
    logger = get_run_logger()
    progress = create_progress_artifact(0.0, key=key, description=description)
    for done, future in enumerate(as_completed(futures), start=1):
        result = future.result()
        percent = 100.0 * done / len(futures)
        yield percent, result
        if throttle.due(final=done == len(futures)):
            update_progress_artifact(progress, percent)
            if line is not None:
                logger.info(line(percent, done))
