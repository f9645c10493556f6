"""What the terminal shows of a failure: one line, the traceback only when asked for.

``aml-smear`` points Prefect's console handler at :class:`ConsoleHandler` (through Prefect's
``PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS`` setting, which the command's Dask worker processes
inherit), so a failing flow or task logs its one-line reason to the terminal without the
traceback; the Prefect API (UI, ``prefect flow-run logs``) still receives the traceback.
It also leaves out the "Finished in state Completed()" line of every task and flow run: the command
prints what completed, and the API keeps them. ``aml-smear --debug`` (or
``AML_SMEAR_DEBUG=1``) keeps tracebacks and those lines in the terminal too.
"""

from __future__ import annotations

import logging
import os

from prefect.logging.handlers import PrefectConsoleHandler

__all__ = ["DEBUG_ENV", "ConsoleHandler", "debug_requested"]

#: Set (to anything but "" or "0") for full tracebacks in the terminal; `aml-smear --debug` sets it.
DEBUG_ENV = "AML_SMEAR_DEBUG"


def debug_requested() -> bool:
    """True when the user asked for tracebacks (``--debug`` or ``AML_SMEAR_DEBUG``)."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


class ConsoleHandler(PrefectConsoleHandler):
    """Prefect's console handler that leaves tracebacks and completion lines out unless debugging was asked for."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not debug_requested() and record.name in ("prefect.task_runs", "prefect.flow_runs") \
                and str(record.msg).startswith("Finished in state Completed("):
            return False
        return super().filter(record)

    def format(self, record: logging.LogRecord) -> str:
        if debug_requested() or not (record.exc_info or record.exc_text or record.stack_info):
            return super().format(record)
        # Other handlers (the API's) see the record unchanged.
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved
