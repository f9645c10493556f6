"""The ``aml-smear`` command line: one module per command group (:mod:`app.cli.pipeline`,
:mod:`app.cli.models`, :mod:`app.cli.runs`) over what they share (:mod:`app.cli.common`)."""

from app.cli.main import cli, main

__all__ = ["cli", "main"]
