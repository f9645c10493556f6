"""TensorFlow's start-up log lines, filtered as ``TF_CPP_MIN_LOG_LEVEL`` asks.

TensorFlow 2.21 writes C++ log lines while its libraries load, before it applies
``TF_CPP_MIN_LOG_LEVEL``: "oneDNN custom operations are on" (port.cc) and "Could not find cuda
drivers" (cudart_stub.cc), both INFO, each set after absl's "WARNING: All log messages before
absl::InitializeLog() is called are written to STDERR". The variable hides only later lines
("failed call to cuInit"), so even at 3 every process that imports TensorFlow printed them.
``TF_ENABLE_ONEDNN_OPTS=0`` would hide the oneDNN line only by turning oneDNN off, which changes
the numerics and the speed.

:func:`install` makes the process's first ``import tensorflow`` write file descriptor 2 to a
temporary file and then copy back every line but the C++ lines below the level (and absl's
notice once it has hidden any): at the default of aml-smear (3) none of them shows, at 0
(``aml-smear --debug``) all of them. Other output of that moment (Python warnings, other threads'
log lines) comes through, a few seconds late.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator

__all__ = ["QUIET_LEVEL", "install", "shown_lines"]

#: TF_CPP_MIN_LOG_LEVEL of aml-smear's processes where the user set none (0 with ``--debug``): 3
#: hides TensorFlow's C++ errors too, as "failed call to cuInit" on a machine without a GPU.
QUIET_LEVEL = "3"

# absl's prefix: severity letter, then the date as MMDD ("I0000 00:00:1796399590.740273 ...").
_PREFIX = re.compile(r"^([IWEF])\d{4} ")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
_ABSL_NOTICE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
)


def _min_level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def shown_lines(lines: list[str], min_level: int) -> list[str]:
    """The lines of ``lines`` that ``TF_CPP_MIN_LOG_LEVEL=min_level`` lets through.

    A C++ log line below the level goes with the lines that continue it (those without a prefix
    of their own, as cpu_feature_guard's second line); absl's notice goes when the level is above 0.
    """
    shown, hiding = [], False
    for line in lines:
        prefix = _PREFIX.match(line)
        if prefix:
            hiding = _SEVERITY[prefix.group(1)] < min_level
        elif line.rstrip("\n") == _ABSL_NOTICE:
            hiding = min_level > 0
        if not hiding:
            shown.append(line)
    return shown


@contextlib.contextmanager
def _filtered_stderr(min_level: int) -> Iterator[None]:
    """File descriptor 2 into a temporary file for the block; then the lines the level shows."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            text = "".join(shown_lines(lines, min_level))
            if text:
                os.write(2, text.encode())


class _FilteringLoader(importlib.abc.Loader):
    """TensorFlow's own loader, its module run with stderr filtered; anything else it is asked, it answers."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def __getattr__(self, name: str):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        # Read now, not at install: the command sets the level after aml_model is first imported.
        level = _min_level()
        # Nothing keeps the wrapper once the module is loaded.
        module.__loader__ = module.__spec__.loader = self._loader
        if level <= 0:
            self._loader.exec_module(module)
            return
        with _filtered_stderr(level):
            self._loader.exec_module(module)


class _TensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` as the other finders do, once, and hands it the filtering loader."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteringLoader(spec.loader)
        return spec


def install() -> None:
    """Filter the start-up lines of this process's first ``import tensorflow`` (none if it has one)."""
    if "tensorflow" not in sys.modules and not any(
        isinstance(f, _TensorFlowImport) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _TensorFlowImport())
