"""Exceptions raised by the AML smear library.

Each class also inherits the builtin a caller would naturally catch (``ValueError``,
``FileNotFoundError``...), after zarr's ``errors.py``, so generic handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "EXPECTED_FAILURES",
    "AmlSmearError",
    "BackboneWeightsError",
    "CalibrationError",
    "ConfigError",
    "ImageDecodeError",
    "PretrainingDivergedError",
    "TrainingCollapsedError",
    "UnsafeModelError",
    "WeightsHashMismatchError",
    "one_line",
]


class AmlSmearError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(AmlSmearError, ValueError):
    """A configuration field holds a value outside its allowed range."""


class ImageDecodeError(AmlSmearError, ValueError):
    """An input could not be turned into a cell image.

    Attributes:
        source: the file name or URI of the input.
        reason: a short human-readable reason, suitable for a quarantine table.
    """

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class BackboneWeightsError(AmlSmearError, RuntimeError):
    """The requested backbone weights cannot be obtained."""


class WeightsHashMismatchError(BackboneWeightsError, ValueError):
    """A weights file does not have the configured sha256."""


class UnsafeModelError(AmlSmearError, ValueError):
    """A saved model holds content that Keras' safe mode refuses to deserialise."""


class TrainingCollapsedError(AmlSmearError, RuntimeError):
    """Training produced a constant (or near-constant) predictor in every attempt."""


class PretrainingDivergedError(AmlSmearError, FloatingPointError):
    """A pretraining's loss is no longer finite: resuming from the checkpoint would diverge again."""


class CalibrationError(AmlSmearError, ValueError):
    """A site's labelled cells cannot support a calibration (too few of a class, scores that do not rank)."""


#: Failures whose message says all: wrong input, a missing or forbidden file. Others name their type.
EXPECTED_FAILURES = (AmlSmearError, ValueError, FileNotFoundError, PermissionError)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line: its lines joined with "; " (" - " list marks dropped)."""
    lines = [line.strip().removeprefix("- ") for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[0] + (" " + "; ".join(lines[1:]) if len(lines) > 1 else "")
