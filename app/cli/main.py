"""The ``aml-smear`` command group: the commands of :mod:`app.cli.pipeline`, ``models`` and ``runs``."""

from __future__ import annotations

import os
import sys

import click

from app.cli import pipeline
from app.cli.common import DEBUG, DEBUG_ENV, QUIET, Group
from app.cli.models import models
from app.cli.runs import runs

__all__ = ["cli", "main"]


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--debug",
    is_flag=True,
    envvar=DEBUG_ENV,
    help="On failure print the full traceback; show TensorFlow's C++ logs [env AML_SMEAR_DEBUG=1].",
)
@click.version_option(package_name="aml-smear")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Score single-cell peripheral blood smear images for AML (Hassan et al. ResNet50).

    Research use only: not a diagnosis.
    """
    settings = {**DEBUG, DEBUG_ENV: "1"} if debug else QUIET
    before = {name: os.environ.get(name) for name in settings}
    for name, value in settings.items():
        if name == DEBUG_ENV:
            os.environ[name] = value
        else:
            os.environ.setdefault(name, value)

    def restore() -> None:  # for callers that run several commands in one process (tests)
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    ctx.call_on_close(restore)


for command in (
    pipeline.model_summary,
    pipeline.ingest_command,
    pipeline.score_command,
    pipeline.calibrate_command,
    pipeline.retrain_command,
    pipeline.pretrain_backbone_command,
    pipeline.bootstrap_command,
    pipeline.report_command,
    pipeline.demo,
    pipeline.serve_command,
    models,
    runs,
):
    cli.add_command(command)


def main() -> None:
    """Entry point of ``aml-smear`` and ``python -m app.cli``."""
    cli(prog_name="aml-smear")


if __name__ == "__main__":
    sys.exit(main())
