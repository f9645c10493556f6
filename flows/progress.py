"""Collect task results as they finish, with a Prefect progress artifact and rate-limited log lines;
submit shards a window at a time."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture, as_completed

from tasks.throttle import Throttle

__all__ = ["Progress", "results_with_progress", "windowed_results"]

T = TypeVar("T")


class Progress:
    """A Prefect progress artifact ``key`` and, given ``line`` (called with the percent and the
    number of steps done), a log line, which follow ``total`` steps, rate-limited by ``throttle``;
    the last step's update always shows."""

    def __init__(
        self,
        total: int,
        key: str,
        description: str,
        line: Callable[[float, int], str] | None = None,
        throttle: Throttle | None = None,
    ) -> None:
        self.total, self.done, self._line = total, 0, line
        self._throttle = throttle or Throttle()
        self._logger = get_run_logger()
        self._artifact = create_progress_artifact(0.0, key=key, description=description)

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 100.0

    def advance(self) -> None:
        """One more step done: call it after the caller has taken that step's result, so that
        ``line`` sees it."""
        self.done += 1
        if self._throttle.due(final=self.done == self.total):
            update_progress_artifact(self._artifact, self.percent)
            if self._line is not None:
                self._logger.info(self._line(self.percent, self.done))


def results_with_progress(
    futures: Sequence[PrefectFuture],
    key: str,
    description: str,
    line: Callable[[float, int], str] | None = None,
    throttle: Throttle | None = None,
) -> Iterator[tuple[float, Any]]:
    """Yield (percent of tasks done, result) as each task finishes, with :class:`Progress`."""
    progress = Progress(len(futures), key, description, line, throttle)
    for done, future in enumerate(as_completed(futures), start=1):
        result = future.result()
        yield 100.0 * done / len(futures), result
        progress.advance()


def windowed_results(
    items: Iterable[T], submit: Callable[[T], Sequence[PrefectFuture]], window: Callable[[], int]
) -> Iterator[tuple[T, int, PrefectFuture]]:
    """Submit each item's tasks (``submit(item)``: its futures, at least one) with at most
    ``window()`` items unfinished at a time, and yield ``(item, position of the task in the item's
    futures, its finished future)`` as each task finishes.

    An item's futures are dropped once all have finished, and only then is the next item
    submitted: the Dask scheduler holds a task (its arguments and Prefect's context, tens of KB)
    while a future refers to it, so a run submitted whole would hold every shard's until its last
    finished, growing with the night; this holds a window's. ``window`` is asked again before each
    submission, so a cluster that grows gets more. A failed task's future raises when the caller
    takes its result, which decides whether to go on.
    """
    finished: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
    pending = iter(enumerate(items))
    unfinished: dict[int, tuple[T, Sequence[PrefectFuture], set[int]]] = {}

    def submit_next() -> bool:
        number, item = next(pending, (None, None))
        if number is None:
            return False
        futures = submit(item)
        if not futures:
            message = f"submitting item {number} gave no task to wait for"
            raise ValueError(message)
        unfinished[number] = (item, futures, set(range(len(futures))))
        for position, future in enumerate(futures):
            future.add_done_callback(lambda _, n=number, p=position: finished.put((n, p)))
        return True

    while len(unfinished) < max(1, window()) and submit_next():
        pass
    while unfinished:
        number, position = finished.get()
        item, futures, left = unfinished[number]
        left.discard(position)
        future = futures[position]
        if not left:
            del unfinished[number]
            while len(unfinished) < max(1, window()) and submit_next():
                pass
        yield item, position, future
