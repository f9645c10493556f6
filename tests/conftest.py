"""Test-wide settings: isolated Keras/Prefect homes, quiet logs, and the real LMU cells."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# Prefect's test harness and a Dask cluster, turned on by tests/flows and tests/app.
pytest_plugins = ["tests.prefect_harness"]

if TYPE_CHECKING:
    from tasks.store import Store

# Set before anything imports Keras or Prefect: a bare `import keras` writes $KERAS_HOME.
# One home per test run: the pytest process that makes it removes it at exit; xdist workers and
# any process that imports this module again (a Dask worker unpickling a test's plugin) inherit it,
# since such processes are often killed, not exited.
if "AML_SMEAR_TEST_HOME" not in os.environ:
    os.environ["AML_SMEAR_TEST_HOME"] = tempfile.mkdtemp(prefix="aml-smear-tests-")
    atexit.register(shutil.rmtree, os.environ["AML_SMEAR_TEST_HOME"], ignore_errors=True)
_SESSION_HOME = Path(os.environ["AML_SMEAR_TEST_HOME"])
os.environ["KERAS_HOME"] = str(_SESSION_HOME / "keras")
# Models copied from s3:// stores go to this session's own cache, not the machine's.
os.environ["AML_SMEAR_CACHE_DIR"] = str(_SESSION_HOME / "cache")
# Tests score with model files they make in their temporary folders, as a lab adds its own folder.
os.environ["AML_SMEAR_MODEL_PREFIXES"] = tempfile.gettempdir()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
# Dummy credentials for the moto S3 server, set before any Dask worker process is started so
# that the workers inherit them as production workers inherit real ones.
for _name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
    os.environ[_name] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LMU_CELLS = Path(
    os.environ.get("AML_SMEAR_LMU_CELLS", PROJECT_ROOT.parent / "shared" / "data" / "lmu-cells")
)
PBC_CELLS = Path(
    os.environ.get("AML_SMEAR_PBC_CELLS", PROJECT_ROOT.parent / "shared" / "data" / "pbc-cells")
)


@pytest.fixture(scope="session")
def lmu_cells() -> Path:
    """The real TCIA AML-Cytomorphology_LMU cells (MYO = blast, NGS = normal), read in place."""
    if not (LMU_CELLS / "labels.csv").is_file():
        pytest.skip(f"real cell data not found at {LMU_CELLS} (set AML_SMEAR_LMU_CELLS)")
    return LMU_CELLS


@pytest.fixture(scope="session")
def pbc_cells() -> Path:
    """The real PBC cells (six healthy types, another lab and scanner; all normal), read in place."""
    if not (PBC_CELLS / "labels.csv").is_file():
        pytest.skip(f"real cell data not found at {PBC_CELLS} (set AML_SMEAR_PBC_CELLS)")
    return PBC_CELLS


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API (moto's server) on 127.0.0.1, one per test session; yields its URL."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, request):
    """A fresh, empty bucket; yields (bucket name, its fsspec options: `Store(f"s3://{bucket}/...", options)`)."""
    import re
    import uuid

    import s3fs

    options = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    name = (
        re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
        + "-"
        + uuid.uuid4().hex[:8]
    )
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir(name)
    fs.invalidate_cache()
    yield name, options


def drain_prefect_events() -> None:
    """Flush and drop this process's Prefect events worker.

    Prefect keeps one events worker per process, bound to the API it first saw; a test harness of
    another module in this process (xdist runs several files per process) would leave it bound to a
    stopped server, and every event after that would be lost. Each harness fixture calls this on
    entering and before leaving, so events reach the server of the tests that emit them.
    """
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=30)


def task_name(key) -> str:
    """A task stream key's name: a Prefect task's, or a Dask dataframe task's (tuple keys)."""
    return (key[0] if isinstance(key, tuple) else key).rsplit("-", 1)[0]


def upload_folder(local: Path, target: Store) -> None:
    """Copy a local folder tree under the root of ``target`` (tests build S3 sources this way)."""
    fs, root = target.resolve()
    for path in sorted(local.rglob("*")):
        if path.is_file():
            fs.pipe_file(f"{root}/{path.relative_to(local).as_posix()}", path.read_bytes())
    fs.invalidate_cache()


@pytest.fixture(scope="session")
def tiny_model_file(lmu_cells, tmp_path_factory) -> Path:
    """A 32x32 paper-architecture model trained briefly on 240 real cells, saved as .keras."""
    import keras
    import numpy as np

    from aml_model.config import ExperimentConfig, PreprocessConfig
    from aml_model.experiment import run_experiment
    from aml_model.io import save_model
    from aml_model.preprocess import decode_cell
    from tests.corpus import lmu_rows

    rows = [r for r in lmu_rows(lmu_cells) if r["label"] == "blast"][:120] + [
        r for r in lmu_rows(lmu_cells) if r["label"] == "normal"
    ][:120]
    config = PreprocessConfig(image_size=32)
    images = np.stack(
        [decode_cell((lmu_cells / r["file"]).read_bytes(), r["file"], config) for r in rows]
    )
    labels = np.array([r["label"] == "blast" for r in rows], dtype=int)
    keras.utils.set_random_seed(0)
    result = run_experiment(images, labels, ExperimentConfig.tiny(image_size=32, epochs=4))
    return save_model(result.model, tmp_path_factory.mktemp("model") / "tiny.keras")
