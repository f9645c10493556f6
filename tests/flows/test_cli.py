import json

import pytest
from click.testing import CliRunner

from flows.cli import cli


def test_help_lists_the_commands():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "model-summary" in result.output and "demo" in result.output


def test_model_summary_prints_the_paper_architecture():
    result = CliRunner().invoke(cli, ["model-summary"])
    assert result.exit_code == 0, result.output
    assert "trainable params: 12,845,313" in result.output
    for name in ("resnet50", "flatten", "dense", "blast_probability"):
        assert name in result.output


def test_model_summary_prints_a_recipes_network():
    result = CliRunner().invoke(cli, ["model-summary", "--recipe", "robust"])
    assert result.exit_code == 0, result.output
    assert "trainable params: 1,025" in result.output
    for name in ("scale_normalisation", "stain_normalisation", "feature_normalisation", "blast_probability"):
        assert name in result.output


def test_demo_runs_the_pipeline_and_prints_the_calls(tmp_path, dask_cluster):
    import pandas as pd
    from distributed import Client, get_task_stream
    from scipy.stats import beta

    from aml_model.aggregate import PATIENT_COLUMNS

    store = tmp_path / "store"
    with Client(dask_cluster.scheduler_address) as client, get_task_stream(client) as stream:
        result = CliRunner().invoke(cli, ["demo", "--store", str(store), "--epochs", "3",
                                          "--scheduler", dask_cluster.scheduler_address])
        workers = set(client.scheduler_info()["workers"])
    assert result.exit_code == 0, result.output
    # The subflows' heavy steps ran on the cluster's two workers, not in the flow process.
    ran = {}
    for record in stream.data:
        ran.setdefault(record["key"].rsplit("-", 1)[0], set()).add(record["worker"])
    for step in ("ingest_shard", "prepare_backbone", "embed_shard", "train_on_features", "compare_with_champion",
                 "score_shard"):
        assert step in ran, sorted(ran)
    assert len(workers) == 2 and set().union(*ran.values()) == workers, ran
    assert f"demo outputs: {store}" in result.output
    for patient in ("SYN-AML-01", "SYN-HLT-03"):
        assert patient in result.output
    assert "research use only: not a diagnosis" in result.output
    champion = json.loads((store / "models" / "champion.json").read_text())["version"]
    model_dir = store / "models" / champion
    for name in ("model.keras", "model_card.json", "learning_curves.png", "confusion_matrix.png", "roc_curve.png",
                 "f1_curve.png"):
        assert (model_dir / name).stat().st_size > 0
    # Two ingest runs: the training cohort, and the demo cohort with its one scoring.
    runs = sorted((store / "runs").iterdir())
    assert len(runs) == 2 and all((r / "_SUCCESS").exists() for r in runs)
    (scoring,) = [s for r in runs for s in (r / "scores").glob("*")]
    assert (scoring / "_SUCCESS").exists()
    patients = pd.read_parquet(scoring / "patients.parquet")
    assert tuple(patients.columns) == (*PATIENT_COLUMNS, "patient_version") and len(patients) == 6
    assert len(pd.read_parquet(scoring / "cells.parquet")) == 240
    # The call rule, recomputed: Clopper-Pearson bounds from scipy's beta quantiles, then the cut-off.
    for row in patients.itertuples():
        k, n = row.n_blast_like, row.n_scored
        low = 0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1)
        high = 1.0 if k == n else beta.ppf(0.975, k + 1, n - k)
        assert (row.ci_low, row.ci_high) == pytest.approx((low, high), abs=1e-9), row.patient_id
        expected = ("INSUFFICIENT_CELLS" if n < row.min_cells else "AML_SUSPECTED" if low >= row.blast_cutoff
                    else "NOT_SUSPECTED" if high < row.blast_cutoff else "INDETERMINATE")
        assert row.call == expected, row.patient_id
    # The demo's ground truth: the synthetic AML patients hold more blast-like cells than the healthy ones.
    fractions = patients.set_index("patient_id")["blast_fraction"]
    assert fractions.filter(like="SYN-AML").mean() > fractions.filter(like="SYN-HLT").mean() + 0.2, fractions


def test_ingest_command_reports_counts_and_reruns_without_work(tmp_path, lmu_cells, dask_cluster):
    from tests.corpus import compose_patient_cohort

    source = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (2, 2)})
    (source / "A" / "broken.jpg").write_bytes(b"")
    args = ["ingest", str(source), "--store", str(tmp_path / "store"), "--run-id", "cli",
            "--scheduler", dask_cluster.scheduler_address, "--image-size", "32"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "run cli complete: 4 cells, 1 quarantined (layout patient)" in first.output
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0, second.output
    assert "run cli already complete, nothing redone: 4 cells, 1 quarantined" in second.output


def test_ingest_command_fails_with_one_line_reason(tmp_path, dask_cluster):
    args = ["ingest", str(tmp_path / "missing"), "--store", str(tmp_path / "s"), "--scheduler",
            dask_cluster.scheduler_address]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert result.output == f"error: source {tmp_path / 'missing'} does not exist\n"
    # --debug lets the exception (and its traceback) through.
    debug = CliRunner().invoke(cli, ["--debug", *args])
    assert debug.exit_code == 1 and isinstance(debug.exception, FileNotFoundError)
    assert not (tmp_path / "s").exists()


def test_invalid_parameters_are_refused_in_one_line_before_anything_runs(tmp_path, lmu_cells, dask_cluster):
    from tests.corpus import compose_patient_cohort

    source = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (2, 2)})
    store = tmp_path / "store"
    result = CliRunner().invoke(cli, ["retrain", str(source), "--store", str(store), "--epochs", "0",
                                      "--scheduler", dask_cluster.scheduler_address])
    assert result.exit_code == 1
    assert result.output == "error: invalid parameters: epochs: Input should be greater than or equal to 1\n"
    missing = CliRunner().invoke(cli, ["retrain", str(source), str(tmp_path / "gone"), "--store", str(store),
                                       "--backbone-weights", "none", "--scheduler", dask_cluster.scheduler_address])
    assert missing.exit_code == 1
    assert missing.output == f"error: source {tmp_path / 'gone'} does not exist\n"
    assert not store.exists()


def _aml_smear(*args: str, env: dict[str, str | None] | None = None):
    import os
    import subprocess
    import sys
    from pathlib import Path

    command = [str(Path(sys.executable).parent / "aml-smear"), *args]
    environment = {name: value for name, value in {**os.environ, **(env or {})}.items() if value is not None}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)


def test_a_failing_command_prints_one_line_and_the_traceback_only_with_debug(tmp_path, dask_cluster):
    import re

    # The real command in its own process, on this session's Prefect API and Dask cluster.
    missing = tmp_path / "missing"
    args = ["ingest", str(missing), "--store", str(tmp_path / "s"), "--scheduler", dask_cluster.scheduler_address]
    plain = _aml_smear(*args)
    assert plain.returncode == 1, plain.stderr
    output = plain.stdout + plain.stderr
    assert "Traceback" not in output, output
    # Prefect's own log lines (time | level | ...) aside, the failure is one line.
    prefect_log = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} \| ")
    assert [line for line in output.splitlines() if not prefect_log.match(line)] == [
        f"error: source {missing} does not exist"], output
    debug = _aml_smear("--debug", *args)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert f"FileNotFoundError: source {missing} does not exist" in debug.stderr


def test_tensorflow_start_up_errors_are_hidden_unless_asked_for(tmp_path):
    import tensorflow as tf

    env = {"TF_CPP_MIN_LOG_LEVEL": None}  # the tests set it; a user usually has not
    quiet = _aml_smear("model-summary", "--image-size", "32", env=env)
    assert quiet.returncode == 0, quiet.stderr
    # e.g. "E0000 00:00:1700000000.000000 1234 cuda_platform.cc:52] failed call to cuInit: ..."
    assert "cuInit" not in quiet.stderr and not any(line.startswith(("E0000", "W0000"))
                                                     for line in quiet.stderr.splitlines()), quiet.stderr
    if tf.sysconfig.get_build_info().get("is_cuda_build") and not tf.config.list_physical_devices("GPU"):
        loud = _aml_smear("--debug", "model-summary", "--image-size", "32", env=env)
        assert loud.returncode == 0 and "cuInit" in loud.stderr, loud.stderr


def test_score_command_prints_the_patient_table(tmp_path, lmu_cells, dask_cluster, tiny_model_file):
    from tests.corpus import compose_patient_cohort

    source = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (3, 2)})
    result = CliRunner().invoke(cli, ["score", str(source), "--store", str(tmp_path / "store"), "--model",
                                      str(tiny_model_file), "--min-cells", "3", "--scheduler",
                                      dask_cluster.scheduler_address])
    assert result.exit_code == 0, result.output
    assert "5 cells scored with model file-" in result.output
    assert "calls at threshold 0.5, blast cut-off 20%, min cells 3\n" in result.output
    assert any(line.startswith("A ") and line.rstrip().endswith(("AML_SUSPECTED", "NOT_SUSPECTED", "INDETERMINATE"))
               for line in result.output.splitlines())
    # A rescoring with other call settings says which, and that the model did not run again.
    again = CliRunner().invoke(cli, ["score", str(source), "--store", str(tmp_path / "store"), "--model",
                                     str(tiny_model_file), "--min-cells", "4", "--blast-cutoff", "0.3",
                                     "--scheduler", dask_cluster.scheduler_address])
    assert again.exit_code == 0, again.output
    assert "calls at threshold 0.5, blast cut-off 30%, min cells 4; probabilities copied from scoring file-" \
           in again.output


def test_score_without_a_model_fails_with_the_way_out(tmp_path, dask_cluster):
    result = CliRunner().invoke(cli, ["score", str(tmp_path), "--store", str(tmp_path / "s"), "--scheduler",
                                      dask_cluster.scheduler_address])
    assert result.exit_code == 1
    assert "no champion model" in result.output and "aml-smear retrain" in result.output


def test_calibrate_command_prints_the_figures_and_score_refuses_an_uncalibrated_site(tmp_path, lmu_cells,
                                                                                      dask_cluster, tiny_model_file):
    from tasks.registry import register_model, set_champion
    from tests.corpus import compose_patient_cohort

    store = str(tmp_path / "store")
    ref = register_model(str(tiny_model_file), {"config": {"model": {"image_size": 32}}}, store)
    set_champion(store, ref.version)
    scheduler = ["--scheduler", dask_cluster.scheduler_address]
    few = compose_patient_cohort(lmu_cells, tmp_path / "few", {"A": (3, 12)})
    refused = CliRunner().invoke(cli, ["calibrate", str(few), "--store", store, "--site", "lab-a", *scheduler])
    assert refused.exit_code == 1
    assert "site lab-a: calibration needs at least 10 labelled cells of each class; found 3 blast" in refused.output
    assert not (tmp_path / "store" / "models" / ref.version / "sites").exists()

    source = compose_patient_cohort(lmu_cells, tmp_path / "lab", {"A": (6, 5), "B": (5, 6)})
    done = CliRunner().invoke(cli, ["calibrate", str(source), "--store", store, "--site", "lab-a", *scheduler])
    assert done.exit_code == 0, done.output
    assert f"site lab-a, model {ref.version}: fitted on 11 blast and 11 other labelled cells" in done.output
    assert any(line.startswith("before (raw, 0.5)") for line in done.output.splitlines())
    assert any(line.startswith("after (calibrated)") for line in done.output.splitlines())
    assert "blast-like fraction expected of a patient with 20% blasts, at each operating point" in done.output
    rows = {line.split()[0]: line.split() for line in done.output.splitlines()
            if line.startswith(("fraction ", "balanced "))}
    assert rows["balanced"][1] == "0.500" and rows["fraction"][-2:] == ["20.0%", "+0.000"]
    assert str(tmp_path / "store" / "models" / ref.version / "sites" / "lab-a.json") in done.output

    stale = CliRunner().invoke(cli, ["score", str(source), "--store", store, "--site", "lab-b", *scheduler])
    assert stale.exit_code == 1
    assert f"site lab-b has no calibration for model {ref.version}" in stale.output
    assert "aml-smear calibrate" in stale.output
