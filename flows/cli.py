"""The ``aml-smear`` command line. Heavy imports (TensorFlow, Prefect) happen inside commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class _CliError(click.ClickException):
    """A one-line failure reason; exit status 1."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="aml-smear")
def cli() -> None:
    """Score single-cell peripheral blood smear images for AML (Hassan et al. ResNet50).

    Research use only: not a diagnosis.
    """


@cli.command("model-summary")
@click.option("--image-size", default=224, show_default=True, help="Side of the square input, pixels.")
def model_summary(image_size: int) -> None:
    """Print the paper architecture and its parameter counts."""
    from aml_model.architecture import build_model
    from aml_model.config import ModelConfig
    from aml_model.summary import describe_model

    # Random backbone weights: the architecture and counts are the same as with ImageNet's.
    model = build_model(ModelConfig(image_size=image_size, backbone_weights="none"))
    click.echo(describe_model(model))


_LAYOUTS = click.Choice(["auto", "patient", "class", "manifest"])


def _cluster_options(command):
    """--workers / --scheduler / --s3-endpoint-url, shared by every flow command."""
    command = click.option("--s3-endpoint-url", envvar="AML_SMEAR_S3_ENDPOINT_URL", default=None,
                           help="S3-compatible endpoint for s3:// URLs (MinIO, moto). Credentials "
                                "come from the usual AWS_* variables.")(command)
    command = click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
                           help="Address of an existing Dask scheduler.")(command)
    return click.option("--workers", type=click.IntRange(min=1), default=None,
                        help="Workers of a new local Dask cluster [default: one per CPU core].")(command)


def _run_flow(flow_fn, workers: int | None, scheduler: str | None, **parameters):
    """Run a flow on a Dask task runner; expected failures become a one-line reason."""
    from aml_model.errors import AmlSmearError
    from flows.runner import dask_task_runner, quiet_dask_logs, shared_prefect_api

    quiet_dask_logs()
    try:
        runner = dask_task_runner(workers, scheduler)
        with shared_prefect_api():
            return flow_fn.with_options(task_runner=runner)(**parameters)
    except (AmlSmearError, ValueError, FileNotFoundError, PermissionError) as exc:
        raise _CliError(str(exc)) from exc


@cli.command("ingest")
@click.argument("source")
@click.option("--store", required=True, help="Run store: a folder or an s3:// URL.")
@click.option("--layout", type=_LAYOUTS, default="auto", show_default=True)
@click.option("--run-id", default=None, help="Run id [default: from the source name and its inputs].")
@click.option("--image-size", default=224, show_default=True, help="Side of the stored cells, pixels.")
@_cluster_options
def ingest_command(source, store, layout, run_id, image_size, workers, scheduler, s3_endpoint_url) -> None:
    """Decode the cell images of SOURCE into the run store (Zarr + Parquet)."""
    from flows.ingest import ingest

    result = _run_flow(ingest, workers, scheduler, source=source, store=store, run_id=run_id, layout=layout,
                       image_size=image_size, s3_endpoint_url=s3_endpoint_url)
    state = "already complete, nothing redone" if result["already_complete"] else "complete"
    click.echo(f"run {result['run_id']} {state}: {result['cells']} cells, {result['quarantined']} quarantined "
               f"(layout {result['layout']}) -> {result['run']}")


@cli.command("demo")
@click.option("--store", default="demo-store", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the demo data and outputs.")
@click.option("--epochs", default=15, show_default=True, help="Maximum training epochs.")
def demo(store: str, epochs: int) -> None:
    """Train and evaluate the model on built-in synthetic demo data."""
    from flows.demo import run_demo

    try:
        outputs = run_demo(Path(store), epochs=epochs, echo=click.echo)
    except Exception as exc:  # the CLI's contract is a one-line reason
        raise _CliError(f"demo failed: {exc}") from exc
    click.echo(f"demo outputs: {outputs}")


def main() -> None:
    """Entry point for ``python -m flows.cli``."""
    cli(prog_name="aml-smear")


if __name__ == "__main__":
    sys.exit(main())
