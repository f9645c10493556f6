"""What every ``aml-smear`` command shares: one-line errors, the cluster and store options, and
running a flow on a Dask task runner. Heavy imports (TensorFlow, Prefect) happen inside functions."""

from __future__ import annotations

import functools
import os
import re
import sys
from contextlib import contextmanager

import click

from aml_model import tf_log
from tasks.store import Store

# Read when Prefect is first imported, and carried with every task to the Dask workers: a busy
# machine can take longer than Prefect's default 20 s to start a temporary API server.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

# Set by the command group before anything imports Prefect or TensorFlow, inherited by the Dask
# workers; a variable the user set wins. TF_CPP_MIN_LOG_LEVEL hides TensorFlow's C++ lines, those
# of its start-up included (aml_model.tf_log); the console handler keeps tracebacks and completion
# lines out of the terminal (flows.logs). --debug (AML_SMEAR_DEBUG=1) shows all of them.
QUIET = {
    "TF_CPP_MIN_LOG_LEVEL": tf_log.QUIET_LEVEL,
    "PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS": "flows.logs.ConsoleHandler",
}
DEBUG = {
    "TF_CPP_MIN_LOG_LEVEL": "0",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS": "flows.logs.ConsoleHandler",
}
DEBUG_ENV = "AML_SMEAR_DEBUG"  # flows.logs.DEBUG_ENV


class CliError(click.ClickException):
    """A one-line failure reason, printed as ``error: <reason>``; exit status 1."""

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", file=file, err=True)


class UsageError(click.UsageError):
    """A command line that cannot run: Click's usage, then ``error: <reason>``; exit status 2."""

    def show(self, file=None) -> None:
        if self.ctx is not None:
            click.echo(
                f"{self.ctx.get_usage()}\nTry '{self.ctx.command_path} -h' for help.",
                file=file,
                err=True,
            )
        click.echo(f"error: {self.format_message()}", file=file, err=True)


def usage_error(exc: click.UsageError) -> click.UsageError:
    """Click's usage error with the reason line every other failure has (``error:``, not ``Error:``)."""
    # Without arguments Click prints the help, as an error of its own kind.
    if isinstance(exc, UsageError | getattr(click.exceptions, "NoArgsIsHelpError", ())):
        return exc
    return UsageError(exc.format_message(), exc.ctx)


class Group(click.Group):
    """Any failure of a command is one line, ``error: <reason>``; its traceback only with --debug.

    Exit status 1 when a command ran and failed, 2 when its command line cannot run (Click's
    checks of the arguments, and the flow's check of its parameters' values).
    """

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise usage_error(exc) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise usage_error(exc) from None
        except (click.exceptions.Exit, click.Abort):
            raise
        except click.ClickException as exc:
            if ctx.params.get("debug") and exc.__cause__ is not None:
                import traceback

                traceback.print_exception(exc.__cause__, file=sys.stderr)
            raise
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            raise CliError(reason_line(exc)) from exc


def reason_line(exc: BaseException) -> str:
    """The line to print: an expected failure's message; anything else with its type and a hint."""
    from aml_model.errors import EXPECTED_FAILURES, one_line

    # Before Prefect is imported (seconds): a missing source fails before the flow is imported.
    if isinstance(exc, EXPECTED_FAILURES):
        return one_line(exc)
    from prefect.exceptions import ParameterTypeError

    from flows.logs import failure_reason

    if isinstance(exc, ParameterTypeError):  # raised before any flow run: say it plainly
        # An options field is a CLI option of its own name: "options.epochs" is --epochs.
        message = re.sub(r"(^|\s)options\.", r"\1", one_line(exc))
        return message.replace("Flow run received invalid parameters:", "invalid parameters:")
    return failure_reason(exc) + " (aml-smear --debug shows the traceback)"


LAYOUTS = click.Choice(["auto", "patient", "class", "manifest"])


def cluster_options(command):
    """--workers / --scheduler / --s3-endpoint-url, shared by every flow command."""
    command = click.option(
        "--s3-endpoint-url",
        envvar="AML_SMEAR_S3_ENDPOINT_URL",
        default=None,
        help="S3-compatible endpoint for s3:// URLs (MinIO, moto). Credentials "
        "come from the usual AWS_* variables.",
    )(command)
    command = click.option(
        "--scheduler",
        default=None,
        metavar="tcp://HOST:PORT",
        help="Address of an existing Dask scheduler.",
    )(command)
    return click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=None,
        help="Workers of a new local Dask cluster [default: one per CPU core].",
    )(command)


def check_inputs(sources: list[Store], store: Store, model: str | None = None) -> None:
    """What the flow checks first, checked before the flow is imported (Prefect: 3-4 s) and its
    temporary Prefect server and Dask cluster start (about 10 s): a missing source, store or model
    fails in a second. The flow checks again, for its other callers (deployments, Python).

    Raises:
        FileNotFoundError: a source, the store's bucket or the model does not exist.
        ValueError: the store is a file.
    """
    from flows.parameters import require_existing, require_store

    require_existing(sources, "source")
    require_store(store)
    if model is not None:
        from tasks.registry import allow_model_file, names_a_file, resolve_model

        if names_a_file(model) or os.path.exists(model):
            # The user named this file on their own command line: this process may load it.
            allow_model_file(model)
        resolve_model(model, store)


def check_parameters(flow_fn, parameters: dict) -> None:
    """The flow's own parameter check (types, choices, bounds), before any server or cluster starts.

    Raises:
        UsageError: naming each invalid parameter and what it accepts (exit status 2).
    """
    import logging

    from prefect.exceptions import ParameterTypeError

    # Prefect logs the failure with every parameter's value over two lines; the error says it in one.
    logger = logging.getLogger("prefect.flows")
    disabled, logger.disabled = logger.disabled, True
    try:
        flow_fn.validate_parameters(parameters)
    except ParameterTypeError as exc:
        raise UsageError(reason_line(exc)) from exc
    finally:
        logger.disabled = disabled


def run_flow(flow_fn, workers: int | None, scheduler: str | None, **parameters):
    """Run a flow on a Dask task runner; a failure becomes a one-line reason (``Group``)."""
    from flows.runner import dask_task_runner, quiet_dask_logs, shared_prefect_api

    quiet_dask_logs()
    check_parameters(flow_fn, parameters)
    runner = dask_task_runner(workers, scheduler)
    with shared_prefect_api():
        return flow_fn.with_options(task_runner=runner)(**parameters)


@contextmanager
def one_line_errors():
    """A registry or storage failure becomes the CLI's one-line ``error: <reason>``."""
    from aml_model.errors import AmlSmearError

    try:
        yield
    except (AmlSmearError, FileNotFoundError, PermissionError) as exc:
        raise CliError(str(exc)) from exc


def takes_store(command):
    """--store and --s3-endpoint-url, as every command that reads a store takes them, handed to the
    command as one ``store``: the :class:`tasks.store.Store` they name."""

    @functools.wraps(command)
    def with_store(*args, **kwargs):
        kwargs["store"] = Store.at(kwargs.pop("store"), kwargs.pop("s3_endpoint_url"))
        return command(*args, **kwargs)

    with_store = click.option(
        "--s3-endpoint-url",
        envvar="AML_SMEAR_S3_ENDPOINT_URL",
        default=None,
        help="S3-compatible endpoint for s3:// URLs (MinIO, moto).",
    )(with_store)
    return click.option(
        "--store", required=True, help="Run store holding models/: a folder or an s3:// URL."
    )(with_store)


def listed(lister, store: Store, empty: str) -> list:
    """``lister(store)``'s entries; with none, says ``empty`` and returns []."""
    with one_line_errors():
        entries = lister(store)
    if not entries:
        click.echo(empty)
    return entries
