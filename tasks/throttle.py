"""A rate limit for progress lines, so a long step reports steadily without flooding the log."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["PROGRESS_INTERVAL_S", "Throttle"]

#: Seconds between two progress lines of one step; its first and last line always show.
PROGRESS_INTERVAL_S = 10.0


class Throttle:
    """Says whether a progress line is due: the first one, the final one, and then one per interval."""

    def __init__(
        self, interval_s: float = PROGRESS_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: float | None = None

    def due(self, final: bool = False) -> bool:
        """True when this line should be written; a line written restarts the interval."""
        now = self._clock()
        if final or self._last is None or now - self._last >= self.interval_s:
            self._last = now
            return True
        return False
