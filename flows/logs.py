"""What the terminal shows of a failure: one line, the traceback only when asked for.

``aml-smear`` points Prefect's console handler at :class:`ConsoleHandler` (through Prefect's
``PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS`` setting, which the command's Dask worker processes
inherit), so a failing flow or task logs its one-line reason to the terminal without the
traceback; the Prefect API (UI, ``prefect flow-run logs``) still receives the traceback.
It also leaves out the "Finished in state Completed()" line of every task and flow run: the command
prints what completed, and the API keeps them. ``aml-smear --debug`` (or
``AML_SMEAR_DEBUG=1``) keeps tracebacks and those lines in the terminal too.

A deployed flow's failure is its state's message (:func:`failing_with_reason`): what
``prefect deployment run --watch``, ``prefect flow-run inspect`` and the UI show.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from prefect.logging.handlers import PrefectConsoleHandler

from aml_model.errors import EXPECTED_FAILURES, one_line
from tasks.settings import DebugSettings, SettingError, variable

__all__ = [
    "DEBUG_ENV",
    "EXPECTED_FAILURES",
    "ConsoleHandler",
    "debug_requested",
    "failing_with_reason",
    "failure_reason",
    "one_line",
]

#: Set (1, true, yes, on) for full tracebacks in the terminal; `aml-smear --debug` sets it (tasks.settings).
DEBUG_ENV = variable("debug")


def debug_requested() -> bool:
    """True when the user asked for tracebacks (``--debug`` or ``AML_SMEAR_DEBUG``).

    Raises:
        tasks.settings.SettingError: AML_SMEAR_DEBUG is not a boolean.
    """
    return DebugSettings.read().debug


def _debugging() -> bool:
    """:func:`debug_requested` for the console handler, which must not raise while logging: an
    unreadable AML_SMEAR_DEBUG (which the CLI and the deployments' entrypoints refuse at start)
    shows everything."""
    try:
        return debug_requested()
    except SettingError:
        return True


def failure_reason(exc: BaseException) -> str:
    """The one-line reason of a failure: an expected one's message; anything else with its type first."""
    if isinstance(exc, EXPECTED_FAILURES):
        return one_line(exc)
    return f"{type(exc).__name__}: {one_line(exc)}"


def failing_with_reason(body: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``body(*args, **kwargs)`` in a flow; when it raises, the flow run's Failed state with its one-line reason.

    Prefect makes a raised exception's message "Flow run encountered an exception: <type>: <message>",
    which is what a ``--watch``ed deployment run and the UI show; the returned state's message is
    the reason alone, as the CLI prints it. The exception stays the state's result, so a caller of
    the flow gets it raised as before; its traceback goes to the flow run's log. A timeout is left
    to Prefect, whose TimedOut state says so.
    """
    # Imported here: Prefect's logging set-up imports this module (ConsoleHandler) while Prefect loads.
    from prefect import get_run_logger
    from prefect.states import Failed

    try:
        return body(*args, **kwargs)
    except TimeoutError:
        raise
    except Exception as exc:
        reason = failure_reason(exc)
        get_run_logger().error("failed: %s", reason, exc_info=exc)
        return Failed(message=reason, data=exc)


class ConsoleHandler(PrefectConsoleHandler):
    """Prefect's console handler that leaves tracebacks and completion lines out unless debugging was asked for."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            not _debugging()
            and record.name in ("prefect.task_runs", "prefect.flow_runs")
            and str(record.msg).startswith("Finished in state Completed(")
        ):
            return False
        return super().filter(record)

    def format(self, record: logging.LogRecord) -> str:
        if _debugging() or not (record.exc_info or record.exc_text or record.stack_info):
            return super().format(record)
        # Other handlers (the API's) see the record unchanged.
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved
