"""Shards submitted a window at a time (flows/progress.py), on Prefect's thread-pool task runner."""

from __future__ import annotations

import threading
import time

import pytest
from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner

from flows.progress import Progress, windowed_results

# A regression in the window would wait for ever on a task that never comes.
pytestmark = pytest.mark.timeout(120)

_lock = threading.Lock()
_finished: list[int] = []
#: Tasks wait for it: a test that must see tasks unfinished closes it until all are submitted.
_gate = threading.Event()


@task
def _slow(item: int, position: int, fail: int | None) -> tuple[int, int]:
    _gate.wait(timeout=60)
    # An item's second task ends after its first: a window refilled after an item's first task,
    # not its last, would show as two items unfinished at a submission.
    time.sleep(0.05 * (position + 1))
    with _lock:
        _finished.append(item)
    if item == fail and position == 1:
        raise ValueError(f"shard {fail} failed")
    return item, position


def _windowed(
    items: list[int], window: int, parts: int, fail: int | None = None, gated: bool = False
) -> tuple[list[tuple], list[int]]:
    """Run items of ``parts`` tasks each through windowed_results in a flow; returns what it
    yielded (with each future's result) and, at each submission, how many items were submitted
    before it and not finished. ``gated``: no task ends before the last item is submitted."""
    submitted: list[int] = []
    unfinished_at_submit: list[int] = []
    _finished.clear()
    if gated:
        _gate.clear()
    else:
        _gate.set()

    def submit(item: int) -> list:
        with _lock:
            finished = {i for i in set(_finished) if _finished.count(i) == parts}
            unfinished_at_submit.append(len(set(submitted) - finished))
        submitted.append(item)
        futures = [_slow.submit(item, position, fail) for position in range(parts)]
        if item == items[-1]:
            _gate.set()
        return futures

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=8))
    def windowed() -> list[tuple]:
        return [
            (item, position, future.result())
            for item, position, future in windowed_results(items, submit, lambda: window)
        ]

    try:
        return windowed(), unfinished_at_submit
    finally:
        _gate.set()


def test_every_task_result_is_yielded_once_with_its_item_and_position():
    yielded, _ = _windowed([0, 1, 2, 3, 4], window=2, parts=2)
    assert sorted(yielded) == sorted((i, p, (i, p)) for i in range(5) for p in (0, 1))


def test_no_more_items_are_unfinished_than_the_window_allows():
    _, unfinished = _windowed(list(range(8)), window=2, parts=2)
    assert unfinished[:2] == [0, 1]
    assert max(unfinished) <= 1  # at a submission, the window's other item at most


def test_without_a_window_every_item_is_submitted_at_once():
    # The check above can fail: submitted all at once, none of the 8 items had finished.
    _, unfinished = _windowed(list(range(8)), window=100, parts=2, gated=True)
    assert unfinished == list(range(8))


def test_a_failed_task_raises_when_its_result_is_taken():
    with pytest.raises(ValueError, match="shard 3 failed"):
        _windowed([0, 1, 2, 3], window=4, parts=2, fail=3)


def test_an_item_without_tasks_is_refused_not_waited_for():
    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def nothing_to_wait_for() -> list:
        return list(windowed_results([0], lambda item: [], lambda: 2))

    with pytest.raises(ValueError, match="gave no task to wait for"):
        nothing_to_wait_for()


def test_progress_counts_steps_to_a_hundred_percent():
    lines: list[str] = []

    @flow
    def counted() -> float:
        progress = Progress(3, "steps", "three steps", lambda p, d: lines.append(f"{d}:{p:.0f}"))
        for _ in range(3):
            progress.advance()
        return progress.percent

    assert counted() == 100.0
    assert lines[-1] == "3:100"
