"""Credentials never leak into outputs; every server the project starts listens on 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import s3fs

from tests.corpus import compose_patient_cohort
from tests.reliability.conftest import FAKE_SECRETS, kill_group, start_python, wait_for
from tests.reliability.s3proxy import FaultProxy

pytestmark = pytest.mark.reliability

AML_SMEAR = str(Path(sys.executable).with_name("aml-smear"))


def leaked(data: bytes | str) -> list[str]:
    """Names of the fake secrets found in ``data``."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return [name for name, secret in FAKE_SECRETS.items() if secret in text]


def listening_sockets(root: psutil.Process) -> dict[tuple[str, int], str]:
    """(ip, port) -> command line of every socket that ``root`` or a descendant listens on."""
    found = {}
    try:
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return found
    for process in family:
        try:
            for connection in process.net_connections(kind="inet"):
                if connection.status == psutil.CONN_LISTEN:
                    found[(connection.laddr.ip, connection.laddr.port)] = " ".join(
                        process.cmdline()[:6]
                    )
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def store_objects(fs: s3fs.S3FileSystem, root: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    return {path: fs.cat_file(path) for path in fs.find(root)}


def test_a_scoring_command_keeps_credentials_out_of_every_output_and_binds_loopback(
    lmu_cells, s3_bucket, s3_endpoint, tiny_model_file, tmp_path
):
    """`aml-smear score` as users run it: its own Prefect server and Dask cluster, fake keys in the environment.

    While it runs, every listening socket of its process tree is on 127.0.0.1. Afterwards the keys
    are in none of: its output, any file of its Prefect home (the server's database: logs,
    artifacts, parameters), any object of the store (tables, JSON, Zarr, reports).
    """
    bucket, options = s3_bucket
    source = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (3, 2)})
    store = f"s3://{bucket}/store"
    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(FAKE_SECRETS, PREFECT_HOME=str(home), AML_SMEAR_S3_ENDPOINT_URL=s3_endpoint)
    log = tmp_path / "output.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [
                AML_SMEAR,
                "score",
                str(source),
                "--store",
                store,
                "--model",
                str(tiny_model_file),
                "--min-cells",
                "3",
                "--workers",
                "1",
                "--run-id",
                "secrets",
            ],
            cwd=tmp_path,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    listening: dict = {}
    try:
        root = psutil.Process(process.pid)
        deadline = time.monotonic() + 400
        while process.poll() is None and time.monotonic() < deadline:
            listening.update(listening_sockets(root))
            time.sleep(0.1)
    finally:
        kill_group(process)
    output = log.read_text()
    assert process.returncode == 0, output[-4000:]
    assert "run secrets, scoring " in output and " complete: 5 cells scored" in output
    assert any("uvicorn" in cmd for cmd in listening.values()), (
        f"the Prefect server was not seen: {listening}"
    )
    assert len(listening) >= 2, f"the Dask scheduler was not seen: {listening}"
    assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening

    assert leaked(output) == []
    database = b"".join(path.read_bytes() for path in home.rglob("*") if path.is_file())
    assert b"scoring with model" in database, "the flow's logs are in the server's database"
    # The report links are presigned (tasks/links.py): like every presigned S3 URL they name the
    # access key id (AWSAccessKeyId= or X-Amz-Credential=), never the secret key. Anywhere else the
    # id is a leak too.
    key_id = FAKE_SECRETS["AWS_ACCESS_KEY_ID"].encode()
    in_links = (b"AWSAccessKeyId=" + key_id + b"&", b"X-Amz-Credential=" + key_id + b"%2F")
    assert any(form in database for form in in_links), "the report links are presigned"
    for form in in_links:
        database = database.replace(form, b"")
    assert leaked(database) == []
    objects = store_objects(s3fs.S3FileSystem(**options), f"{bucket}/store")
    assert any(path.endswith("runs/secrets/_SUCCESS") for path in objects)
    assert {path: leaked(data) for path, data in objects.items() if leaked(data)} == {}


def test_a_failing_command_does_not_echo_the_access_key(
    cohort, cluster, s3_bucket, s3_endpoint, tiny_model_file, tmp_path
):
    """S3 refuses the key and echoes it in its error body (as AWS does): the error message has no key.

    Then every log, artifact and flow-run parameter this session's Prefect API holds (the flows
    of the reliability tests ran with the fake keys) is searched for the keys.
    """
    from prefect.client.orchestration import get_client

    bucket, _ = s3_bucket
    with FaultProxy(s3_endpoint) as proxy:
        proxy.fault = lambda method, path: (
            ("status", 403, "InvalidAccessKeyId", True) if method == "PUT" else None
        )
        log = tmp_path / "denied.log"
        process = start_python(
            "import sys\nfrom app.cli import main\nsys.argv = ['aml-smear', *sys.argv[1:]]\nmain()",
            "score",
            str(cohort),
            "--store",
            f"s3://{bucket}/store",
            "--model",
            str(tiny_model_file),
            "--run-id",
            "denied",
            "--s3-endpoint-url",
            proxy.url,
            "--scheduler",
            cluster.scheduler_address,
            log=log,
            env=FAKE_SECRETS,
        )
        try:
            wait_for(lambda: process.poll() is not None, 300, "the command to fail")
        finally:
            kill_group(process)
    output = log.read_text()
    assert process.returncode == 1, output[-4000:]
    # The store's first write is the source's listing (docs/design.md, "Inputs").
    assert (
        "error: cannot write" in output
        and "/store/_staging/" in output
        and "inputs.parquet" in output
    ), output[-4000:]
    assert proxy.injected["status"] >= 1
    assert leaked(output) == []

    with get_client(sync_client=True) as client:
        logs, offset = [], 0
        while batch := client.read_logs(limit=200, offset=offset):
            logs += batch
            offset += len(batch)
        artifacts = client.read_artifacts()
        runs = client.read_flow_runs()
    assert any("cannot write" in entry.message for entry in logs), (
        "the failure is in the Prefect logs"
    )
    assert [entry.message for entry in logs if leaked(entry.message)] == []
    assert [a.key for a in artifacts if leaked(json.dumps(a.data, default=str))] == []
    assert [r.name for r in runs if leaked(json.dumps(r.parameters, default=str))] == []


def test_serve_binds_no_port_beyond_loopback(tmp_path):
    """`aml-smear serve` against this session's Prefect API: nothing of its process tree listens off-host."""
    from prefect.variables import Variable

    Variable.set("aml_smear_store", str(tmp_path / "store"), overwrite=True)
    Variable.set("aml_smear_retrain_sources", [str(tmp_path / "cells")], overwrite=True)
    log = tmp_path / "serve.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [AML_SMEAR, "serve", "--workers", "1"],
            cwd=tmp_path,
            env={**os.environ, **FAKE_SECRETS},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    listening: dict = {}
    try:
        wait_for(
            lambda: log.read_text().count("serving ") >= 2 or process.poll() is not None,
            120,
            "aml-smear serve to register its deployments",
        )
        assert process.poll() is None, log.read_text()[-3000:]
        root = psutil.Process(process.pid)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            listening.update(listening_sockets(root))
            time.sleep(0.1)
    finally:
        kill_group(process, signal.SIGINT)
    assert {ip for ip, _ in listening} <= {"127.0.0.1"}, listening
    assert leaked(log.read_text()) == []
