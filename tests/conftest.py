"""Test-wide settings: isolated Keras/Prefect homes, quiet logs, and the real LMU cells."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Set before anything imports Keras or Prefect: a bare `import keras` writes $KERAS_HOME.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="aml-smear-tests-"))
os.environ["KERAS_HOME"] = str(_SESSION_HOME / "keras")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LMU_CELLS = Path(os.environ.get("AML_SMEAR_LMU_CELLS", PROJECT_ROOT.parent / "shared" / "data" / "lmu-cells"))


@pytest.fixture(scope="session")
def lmu_cells() -> Path:
    """The real TCIA AML-Cytomorphology_LMU cells (MYO = blast, NGS = normal), read in place."""
    if not (LMU_CELLS / "labels.csv").is_file():
        pytest.skip(f"real cell data not found at {LMU_CELLS} (set AML_SMEAR_LMU_CELLS)")
    return LMU_CELLS
