import json

import pytest
from click.testing import CliRunner

from app.cli import cli
from tests.conftest import task_name


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
    for name in (
        "scale_normalisation",
        "stain_normalisation",
        "feature_normalisation",
        "blast_probability",
    ):
        assert name in result.output


def test_demo_runs_the_pipeline_and_prints_the_calls(tmp_path, dask_cluster):
    import pandas as pd
    from distributed import Client, get_task_stream
    from scipy.stats import beta

    from aml_model.aggregate import PATIENT_COLUMNS

    store = tmp_path / "store"
    with Client(dask_cluster.scheduler_address) as client, get_task_stream(client) as stream:
        result = CliRunner().invoke(
            cli,
            [
                "demo",
                "--store",
                str(store),
                "--epochs",
                "3",
                "--scheduler",
                dask_cluster.scheduler_address,
            ],
        )
        workers = set(client.scheduler_info()["workers"])
    assert result.exit_code == 0, result.output
    # The subflows' heavy steps ran on the cluster's two workers, not in the flow process.
    ran = {}
    for record in stream.data:
        ran.setdefault(task_name(record["key"]), set()).add(record["worker"])
    for step in (
        "ingest_shard",
        "prepare_backbone",
        "embed_shard",
        "train_on_features",
        "compare_with_champion",
        "score_shard",
    ):
        assert step in ran, sorted(ran)
    assert len(workers) == 2 and set().union(*ran.values()) == workers, ran
    assert f"demo outputs: {store}" in result.output
    for patient in ("SYN-AML-01", "SYN-HLT-03"):
        assert patient in result.output
    assert "research use only: not a diagnosis" in result.output
    champion = json.loads((store / "models" / "champion.json").read_text())["version"]
    model_dir = store / "models" / champion
    for name in (
        "model.keras",
        "model_card.json",
        "learning_curves.png",
        "confusion_matrix.png",
        "roc_curve.png",
        "f1_curve.png",
    ):
        assert (model_dir / name).stat().st_size > 0
    # Two ingest runs: the training cohort, and the demo cohort with its one scoring.
    runs = sorted((store / "runs").iterdir())
    assert len(runs) == 2 and all((r / "_SUCCESS").exists() for r in runs)
    (scoring,) = [s for r in runs for s in (r / "scores").glob("*")]
    assert (scoring / "_SUCCESS").exists()
    patients = pd.read_parquet(scoring / "patients.parquet")
    assert tuple(patients.columns) == (*PATIENT_COLUMNS, "patient_version") and len(patients) == 6
    # Scored with score's defaults, on enough cells for them: the calls are calls, not INSUFFICIENT_CELLS.
    assert len(pd.read_parquet(scoring / "cells.parquet")) == 600
    assert (
        "called with aml-smear score's defaults: threshold 0.5, blast cut-off 20%, min cells 100, "
        "max quarantined share 2%"
    ) in result.output
    assert (patients["min_cells"] == 100).all() and "INSUFFICIENT_CELLS" not in set(
        patients["call"]
    )
    # The call rule, recomputed: Clopper-Pearson bounds from scipy's beta quantiles, then the cut-off.
    for row in patients.itertuples():
        k, n = row.n_blast_like, row.n_scored
        low = 0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1)
        high = 1.0 if k == n else beta.ppf(0.975, k + 1, n - k)
        assert (row.ci_low, row.ci_high) == pytest.approx((low, high), abs=1e-9), row.patient_id
        expected = (
            "INSUFFICIENT_CELLS"
            if n < row.min_cells
            else "AML_SUSPECTED"
            if low >= row.blast_cutoff
            else "NOT_SUSPECTED"
            if high < row.blast_cutoff
            else "INDETERMINATE"
        )
        assert row.call == expected, row.patient_id
    # The demo's ground truth: the synthetic AML patients hold more blast-like cells than the healthy ones.
    fractions = patients.set_index("patient_id")["blast_fraction"]
    assert (
        fractions.filter(like="SYN-AML").mean() > fractions.filter(like="SYN-HLT").mean() + 0.2
    ), fractions
    # The same cohort through `aml-smear score` (what the on-demand deployment runs) with its defaults
    # finds the demo's scoring: the same settings, so the same calls.
    again = CliRunner().invoke(
        cli,
        [
            "score",
            str(store / "demo-data"),
            "--store",
            str(store),
            "--scheduler",
            dask_cluster.scheduler_address,
        ],
    )
    assert again.exit_code == 0, again.output
    assert f"scoring {scoring.name} already complete, nothing redone" in again.output


def test_ingest_command_reports_counts_and_reruns_without_work(tmp_path, lmu_cells, dask_cluster):
    from tests.corpus import compose_patient_cohort

    source = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (2, 2)})
    (source / "A" / "broken.jpg").write_bytes(b"")
    args = [
        "ingest",
        str(source),
        "--store",
        str(tmp_path / "store"),
        "--run-id",
        "cli",
        "--scheduler",
        dask_cluster.scheduler_address,
        "--image-size",
        "32",
    ]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "run cli complete: 4 cells, 1 quarantined (layout patient)" in first.output
    quarantine = tmp_path / "store" / "runs" / "cli" / "quarantine.parquet"
    assert (
        f"1 input quarantined, not scored, listed in {quarantine}:\n  A/broken.jpg: empty file (0 bytes)\n"
        in first.output
    )
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0, second.output
    assert "run cli already complete, nothing redone: 4 cells, 1 quarantined" in second.output


def test_ingest_command_fails_with_one_line_reason(tmp_path, dask_cluster):
    args = [
        "ingest",
        str(tmp_path / "missing"),
        "--store",
        str(tmp_path / "s"),
        "--scheduler",
        dask_cluster.scheduler_address,
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert result.output == f"error: source {tmp_path / 'missing'} does not exist\n"
    # --debug lets the exception (and its traceback) through.
    debug = CliRunner().invoke(cli, ["--debug", *args])
    assert debug.exit_code == 1 and isinstance(debug.exception, FileNotFoundError)
    assert not (tmp_path / "s").exists()


def test_invalid_parameters_are_refused_in_one_line_before_anything_runs(
    tmp_path, lmu_cells, dask_cluster
):
    from tests.corpus import compose_patient_cohort

    source = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (2, 2)})
    store = tmp_path / "store"
    result = CliRunner().invoke(
        cli,
        [
            "retrain",
            str(source),
            "--store",
            str(store),
            "--epochs",
            "0",
            "--scheduler",
            dask_cluster.scheduler_address,
        ],
    )
    assert (
        result.exit_code == 2
    )  # a command line that cannot run, as Click's own usage errors: the usage first
    assert (
        result.output.splitlines()[-1]
        == "error: invalid parameters: epochs: Input should be greater than or "
        "equal to 1"
    )
    missing = CliRunner().invoke(
        cli,
        [
            "retrain",
            str(source),
            str(tmp_path / "gone"),
            "--store",
            str(store),
            "--backbone-weights",
            "none",
            "--scheduler",
            dask_cluster.scheduler_address,
        ],
    )
    assert missing.exit_code == 1
    assert missing.output == f"error: source {tmp_path / 'gone'} does not exist\n"
    assert not store.exists()
    bare = CliRunner().invoke(cli, ["bootstrap", "--store", str(store)])
    assert bare.exit_code == 2 and bare.output.startswith(
        "Usage: cli bootstrap [OPTIONS] [SOURCES]..."
    )
    assert bare.output.splitlines()[-1].startswith("error: bootstrap needs SOURCE... and --store")


def _aml_smear(*args: str, env: dict[str, str | None] | None = None):
    import os
    import subprocess
    import sys
    from pathlib import Path

    command = [str(Path(sys.executable).parent / "aml-smear"), *args]
    environment = {
        name: value for name, value in {**os.environ, **(env or {})}.items() if value is not None
    }
    # This checkout's code, whichever checkout the environment's editable install points at.
    root = str(Path(__file__).resolve().parents[2])
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [root, environment.get("PYTHONPATH")]))
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)


def test_a_failing_command_prints_one_line_and_the_traceback_only_with_debug(
    tmp_path, dask_cluster
):
    import re

    # The real command in its own process, on this session's Prefect API and Dask cluster.
    missing = tmp_path / "missing"
    args = [
        "ingest",
        str(missing),
        "--store",
        str(tmp_path / "s"),
        "--scheduler",
        dask_cluster.scheduler_address,
    ]
    plain = _aml_smear(*args)
    assert plain.returncode == 1, plain.stderr
    output = plain.stdout + plain.stderr
    assert "Traceback" not in output, output
    # Prefect's own log lines (time | level | ...) aside, the failure is one line.
    prefect_log = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} \| ")
    assert [line for line in output.splitlines() if not prefect_log.match(line)] == [
        f"error: source {missing} does not exist"
    ], output
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
    assert "cuInit" not in quiet.stderr and not any(
        line.startswith(("E0000", "W0000")) for line in quiet.stderr.splitlines()
    ), quiet.stderr
    # TensorFlow's start-up lines, written before it reads TF_CPP_MIN_LOG_LEVEL (aml_model.tf_log).
    assert "absl::InitializeLog" not in quiet.stderr and "oneDNN" not in quiet.stderr, quiet.stderr
    loud = _aml_smear("--debug", "model-summary", "--image-size", "32", env=env)
    assert loud.returncode == 0 and "absl::InitializeLog" in loud.stderr, loud.stderr
    if tf.sysconfig.get_build_info().get("is_cuda_build") and not tf.config.list_physical_devices(
        "GPU"
    ):
        assert "cuInit" in loud.stderr, loud.stderr


#: What a successful run printed besides its results (issue 27): TensorFlow's C++ start-up lines,
#: Dask's port and nanny warnings, AutoGraph's warning, shutdown tracebacks, completion lines.
NOISE = (
    "absl::InitializeLog",
    "cudart_stub",
    "oneDNN custom operations",
    "cuInit",
    "already in use",
    "still alive after",
    "CommClosedError",
    "AutoGraph",
    "do_not_convert",
    "Finished in state Completed()",
)


def test_a_scoring_prints_its_results_and_no_noise(tmp_path, lmu_cells, tiny_model_file):
    import socket

    from tests.corpus import compose_patient_cohort

    source = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (5, 5), "B": (5, 5)})
    args = [
        "score",
        str(source),
        "--store",
        str(tmp_path / "store"),
        "--model",
        str(tiny_model_file),
        "--min-cells",
        "3",
        "--workers",
        "2",
    ]
    # A Dask scheduler of another run holds 8787, the port Dask's HTTP server takes by default.
    with socket.socket() as other_run:
        other_run.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            other_run.bind(("127.0.0.1", 8787))
            other_run.listen()
        except OSError:
            pass  # something already listens there: as good
        # A user's environment: no TF_CPP_MIN_LOG_LEVEL (the tests set one); its own cluster.
        run = _aml_smear(*args, env={"TF_CPP_MIN_LOG_LEVEL": None})
    assert run.returncode == 0, run.stderr
    assert "20 cells scored" in run.stdout and "patient reports:" in run.stdout, run.stdout
    noise = [
        line
        for line in (run.stdout + run.stderr).splitlines()
        if any(text in line for text in NOISE)
    ]
    assert not noise, run.stderr


def test_a_missing_source_fails_at_once_with_one_line(tmp_path):
    missing = tmp_path / "missing"
    # No Prefect API configured: a command that got as far as its flow would start a temporary server.
    run = _aml_smear(
        "score", str(missing), "--store", str(tmp_path / "s"), env={"PREFECT_API_URL": None}
    )
    assert run.returncode == 1
    assert run.stderr == f"error: source {missing} does not exist\n" and run.stdout == ""
    assert not (tmp_path / "s").exists()
    # Usage errors: status 2, the usage, and the same reason line.
    usage = _aml_smear("score", str(missing), "--stor", str(tmp_path / "s"))
    assert usage.returncode == 2
    assert usage.stderr.startswith("Usage: aml-smear score [OPTIONS] SOURCE\n")
    assert usage.stderr.splitlines()[-1].startswith("error: No such option '--stor'")


def test_score_command_prints_the_patient_table(tmp_path, lmu_cells, dask_cluster, tiny_model_file):
    from tests.corpus import compose_patient_cohort

    source = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (3, 2)})
    result = CliRunner().invoke(
        cli,
        [
            "score",
            str(source),
            "--store",
            str(tmp_path / "store"),
            "--model",
            str(tiny_model_file),
            "--min-cells",
            "3",
            "--scheduler",
            dask_cluster.scheduler_address,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "5 cells scored with model file-" in result.output
    assert "calls at threshold 0.5, blast cut-off 20%, min cells 3\n" in result.output
    assert any(
        line.startswith("A ")
        and line.rstrip().endswith(("AML_SUSPECTED", "NOT_SUSPECTED", "INDETERMINATE"))
        for line in result.output.splitlines()
    )
    # A rescoring with other call settings says which, and that the model did not run again.
    again = CliRunner().invoke(
        cli,
        [
            "score",
            str(source),
            "--store",
            str(tmp_path / "store"),
            "--model",
            str(tiny_model_file),
            "--min-cells",
            "4",
            "--blast-cutoff",
            "0.3",
            "--scheduler",
            dask_cluster.scheduler_address,
        ],
    )
    assert again.exit_code == 0, again.output
    assert (
        "calls at threshold 0.5, blast cut-off 30%, min cells 4; probabilities copied from scoring file-"
        in again.output
    )


def test_score_command_names_the_first_ten_quarantined_files_and_where_all_are(
    tmp_path, lmu_cells, dask_cluster, tiny_model_file
):
    import pandas as pd

    from tests.corpus import compose_patient_cohort

    source = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (2, 2), "B": (2, 2)})
    for n in range(11):
        (source / "A" / f"broken-{n:02d}.jpg").write_bytes(b"")
    (source / "B" / "page.png").write_bytes(b"<html>")
    store = tmp_path / "store"
    result = CliRunner().invoke(
        cli,
        [
            "score",
            str(source),
            "--store",
            str(store),
            "--model",
            str(tiny_model_file),
            "--min-cells",
            "3",
            "--no-explain",
            "--scheduler",
            dask_cluster.scheduler_address,
        ],
    )
    assert result.exit_code == 0, result.output
    (run,) = (store / "runs").iterdir()
    assert len(pd.read_parquet(run / "quarantine.parquet")) == 12
    lines = result.output.splitlines()
    start = lines.index(
        f"12 inputs quarantined, not scored; the first 10 here, all with their reasons in "
        f"{run / 'quarantine.parquet'}:"
    )
    # By patient, then file; named as in the source, not by URI or cell hash.
    assert lines[start + 1 : start + 11] == [
        f"  A/broken-{n:02d}.jpg: empty file (0 bytes)" for n in range(10)
    ]
    assert "A/broken-10.jpg" not in result.output and "B/page.png" not in result.output
    assert lines[start + 11].startswith("patient reports: ")
    # A loses 11 of its 15 inputs, B 1 of 5: both above the default share of 2%.
    table = pd.read_parquet(next(run.glob("scores/*/patients.parquet")))
    assert table["qc_flags"].str.contains("high_quarantine_rate").all()


def test_score_without_a_model_fails_with_the_way_out(tmp_path, dask_cluster):
    result = CliRunner().invoke(
        cli,
        [
            "score",
            str(tmp_path),
            "--store",
            str(tmp_path / "s"),
            "--scheduler",
            dask_cluster.scheduler_address,
        ],
    )
    assert result.exit_code == 1
    assert "no champion model" in result.output and "aml-smear retrain" in result.output


def test_calibrate_command_prints_the_figures_and_score_refuses_an_uncalibrated_site(
    tmp_path, lmu_cells, dask_cluster, tiny_model_file
):
    from tasks.registry import register_model, set_champion
    from tasks.store import Store
    from tests.corpus import compose_patient_cohort

    store = str(tmp_path / "store")
    ref = register_model(
        str(tiny_model_file), {"config": {"model": {"image_size": 32}}}, Store(store)
    )
    set_champion(Store(store), ref.version)
    scheduler = ["--scheduler", dask_cluster.scheduler_address]
    few = compose_patient_cohort(lmu_cells, tmp_path / "few", {"A": (3, 12)})
    refused = CliRunner().invoke(
        cli, ["calibrate", str(few), "--store", store, "--site", "lab-a", *scheduler]
    )
    assert refused.exit_code == 1
    assert (
        "site lab-a: calibration needs at least 10 labelled cells of each class; found 3 blast"
        in refused.output
    )
    assert not (tmp_path / "store" / "models" / ref.version / "sites").exists()

    source = compose_patient_cohort(lmu_cells, tmp_path / "lab", {"A": (6, 5), "B": (5, 6)})
    done = CliRunner().invoke(
        cli, ["calibrate", str(source), "--store", store, "--site", "lab-a", *scheduler]
    )
    assert done.exit_code == 0, done.output
    assert (
        f"site lab-a, model {ref.version}: fitted on 11 blast and 11 other labelled cells"
        in done.output
    )
    assert any(line.startswith("before (raw, 0.5)") for line in done.output.splitlines())
    assert any(line.startswith("after (calibrated)") for line in done.output.splitlines())
    assert (
        "blast-like fraction expected of a patient with 20% blasts, at each operating point"
        in done.output
    )
    rows = {
        line.split()[0]: line.split()
        for line in done.output.splitlines()
        if line.startswith(("fraction ", "balanced "))
    }
    assert rows["balanced"][1] == "0.500" and rows["fraction"][-2:] == ["20.0%", "+0.000"]
    assert str(tmp_path / "store" / "models" / ref.version / "sites" / "lab-a.json") in done.output

    stale = CliRunner().invoke(
        cli, ["score", str(source), "--store", store, "--site", "lab-b", *scheduler]
    )
    assert stale.exit_code == 1
    assert f"site lab-b has no calibration for model {ref.version}" in stale.output
    assert "aml-smear calibrate" in stale.output
