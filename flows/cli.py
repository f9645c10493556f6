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
