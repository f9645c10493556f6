"""Collect task results as they finish, keeping a Prefect progress artifact up to date."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture, as_completed

__all__ = ["results_with_progress"]


def results_with_progress(futures: Sequence[PrefectFuture], key: str, description: str) -> Iterator[tuple[float, Any]]:
    """Yield (percent of tasks done, result) as each task finishes; the artifact ``key`` follows along."""
    progress = create_progress_artifact(0.0, key=key, description=description)
    for done, future in enumerate(as_completed(futures), start=1):
        result = future.result()
        percent = 100.0 * done / len(futures)
        update_progress_artifact(progress, percent)
        yield percent, result
