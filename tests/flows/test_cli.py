import json

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


def test_demo_trains_evaluates_and_says_where(tmp_path):
    store = tmp_path / "store"
    result = CliRunner().invoke(cli, ["demo", "--store", str(store), "--epochs", "3"])
    assert result.exit_code == 0, result.output
    out = store / "demo-model"
    assert f"demo outputs: {out}" in result.output
    for name in ("model.keras", "learning_curves.png", "confusion_matrix.png", "roc_curve.png", "f1_curve.png"):
        assert (out / name).stat().st_size > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 24 and 0 <= metrics["roc_auc"] <= 1


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
    result = CliRunner().invoke(cli, ["ingest", str(tmp_path / "missing"), "--store", str(tmp_path / "s"),
                                      "--scheduler", dask_cluster.scheduler_address])
    assert result.exit_code == 1
    assert f"Error: source {tmp_path / 'missing'} does not exist" in result.output
