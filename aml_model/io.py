"""Save and load models in the native ``.keras`` format, with Keras' safe mode on."""

from __future__ import annotations

from pathlib import Path

import keras

from aml_model.errors import UnsafeModelError

# Registers the project's own serialisable layers, which saved models may hold.
from aml_model.pooling import SpatialMeanStd  # noqa: F401
from aml_model.scale import ScaleNormalisation  # noqa: F401
from aml_model.stain import StainNormalisation  # noqa: F401

__all__ = ["load_model", "save_model"]


def save_model(model: keras.Model, path: str | Path) -> Path:
    """Save ``model`` to a local ``.keras`` file and return its path."""
    path = Path(path)
    if path.suffix != ".keras":
        message = f"{path}: a model file must end in .keras"
        raise ValueError(message)
    model.save(path)
    return path


def load_model(path: str | Path, compile: bool = True) -> keras.Model:
    """Load a local ``.keras`` file in safe mode.

    Args:
        path: local file written by :func:`save_model`.
        compile: restore the optimizer and loss as well (needed only to train further).

    Raises:
        FileNotFoundError: no such file.
        UnsafeModelError: the file holds a Lambda layer or other content that safe mode refuses.
    """
    path = Path(path)
    if not path.is_file():
        message = f"model file {path} does not exist"
        raise FileNotFoundError(message)
    try:
        return keras.models.load_model(path, compile=compile, safe_mode=True)
    except ValueError as exc:
        if "safe_mode" in str(exc) or "unsafe" in str(exc).lower() or "lambda" in str(exc).lower():
            message = f"model file {path} was refused by Keras safe mode: {exc}"
            raise UnsafeModelError(message) from exc
        raise
    except TypeError as exc:
        # A config naming code outside Keras (os.system, subprocess.Popen...) is not imported:
        # Keras raises a TypeError pages long; say in one line what happened.
        if "Could not locate" in str(exc):
            found = str(exc).rsplit("Full object config:", 1)[-1].strip()[:200]
            message = (
                f"model file {path} names a class or function that is not a Keras object and was refused "
                f"by safe loading: {found}"
            )
            raise UnsafeModelError(message) from exc
        raise
