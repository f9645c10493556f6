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
