"""The nightly's configuration from Prefect variables, read when each run starts; bootstrap; skipping
training when nothing changed since the champion. Flows run under Prefect's test harness, in process."""

from __future__ import annotations

import hashlib
import json

import pytest
from click.testing import CliRunner

from flows.nightly import NIGHTLY_VARIABLES, OPTIONS_VARIABLE, nightly_parameters
from tests.corpus import compose_patient_cohort

# A checkout without uncommitted changes: the code of every run here compares equal.
CLEAN = {"package": "0.1.0", "commit": "c" * 40, "dirty": False}


def test_run_parameters_win_over_variables_which_win_over_the_flow_defaults():
    variables = {
        "aml_smear_store": "s3://lab/store",
        "aml_smear_retrain_sources": ["s3://lab/a"],
        "aml_smear_epochs": 20,
        "aml_smear_recipe": "",
        OPTIONS_VARIABLE: {"patience": 2, "epochs": 9},
    }
    parameters, origin = nightly_parameters({"epochs": 3, "store": None, "recipe": None}, variables)
    assert parameters == {
        "store": "s3://lab/store",
        "sources": ["s3://lab/a"],
        "epochs": 3,
        "patience": 2,
    }
    assert origin == {
        "store": "variable aml_smear_store",
        "sources": "variable aml_smear_retrain_sources",
        "epochs": "run parameter",
        "patience": f"variable {OPTIONS_VARIABLE}",
    }
    # A named variable wins over the same parameter in the options object; "" is unset (recipe: default).
    assert nightly_parameters({}, variables)[0]["epochs"] == 20


@pytest.mark.parametrize(
    ("sources", "expected"),
    [
        ("s3://lab/a", ["s3://lab/a"]),
        ('["s3://lab/a", "/data/b"]', ["s3://lab/a", "/data/b"]),
        (["/data/b"], ["/data/b"]),
    ],
)
def test_sources_may_be_one_url_or_a_json_list_as_text(sources, expected):
    variables = {"aml_smear_store": "/store", "aml_smear_retrain_sources": sources}
    assert nightly_parameters({}, variables)[0]["sources"] == expected


def test_missing_or_malformed_configuration_says_which_variable_to_set():
    with pytest.raises(
        ValueError,
        match=r"no store and no sources: prefect variable set aml_smear_store .*"
        r"prefect variable set aml_smear_retrain_sources",
    ):
        nightly_parameters({}, {"aml_smear_retrain_sources": []})
    with pytest.raises(
        ValueError,
        match=f"{OPTIONS_VARIABLE} must be a JSON object of retrain parameters; "
        r"not \['epoch'\]",
    ):
        nightly_parameters(
            {},
            {
                "aml_smear_store": "/s",
                "aml_smear_retrain_sources": ["/a"],
                OPTIONS_VARIABLE: '{"epoch": 3}',
            },
        )


@pytest.fixture
def variables():
    """Sets Prefect variables on the harness; unsets every nightly variable afterwards."""
    from prefect.variables import Variable

    def set_variables(**values):
        for name, value in values.items():
            Variable.set(name, value, overwrite=True)

    yield set_variables
    for name in [*NIGHTLY_VARIABLES.values(), OPTIONS_VARIABLE]:
        Variable.unset(name)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """Backbone weights of a seeded random ResNet50 (no download), with their sha256."""
    import keras

    from aml_model.architecture import build_backbone
    from aml_model.config import ModelConfig

    keras.utils.set_random_seed(3)
    path = tmp_path_factory.mktemp("weights") / "backbone.weights.h5"
    build_backbone(ModelConfig(image_size=32, backbone_weights="none")).save_weights(path)
    return str(path), hashlib.sha256(path.read_bytes()).hexdigest()


def test_bootstrap_then_the_nightly_skips_until_a_variable_changes(
    lmu_cells, weights_file, tmp_path, dask_cluster, task_runner, variables, monkeypatch
):
    from prefect.artifacts import Artifact

    from app.cli import cli
    from app.serve import NIGHTLY_RETRAIN, deployed_flow

    monkeypatch.setattr("tasks.registry.code_version", lambda root=None: CLEAN)
    monkeypatch.setattr("flows.retrain.code_version", lambda root=None: CLEAN)
    plan = {f"P{i:02d}": ((14, 6) if i % 2 else (3, 17)) for i in range(12)}
    source = compose_patient_cohort(lmu_cells, tmp_path / "labelled", plan)
    store = tmp_path / "store"
    weights, digest = weights_file
    variables(
        aml_smear_store=str(store),
        aml_smear_retrain_sources=[str(source)],
        aml_smear_backbone_weights=weights,
        aml_smear_backbone_weights_sha256=digest,
        aml_smear_image_size=32,
        aml_smear_epochs=2,
        **{OPTIONS_VARIABLE: {"augment_views": 0, "patience": 1}},
    )

    bootstrap = ["bootstrap", "--from-variables", "--scheduler", dask_cluster.scheduler_address]
    first = CliRunner().invoke(cli, bootstrap)
    assert first.exit_code == 0, first.output
    champion = json.loads((store / "models" / "champion.json").read_text())["version"]
    assert f"champion {champion}: trained on 1 source(s) ({source})" in first.output
    card = json.loads((store / "models" / champion / "model_card.json").read_text())
    assert (
        card["config"]["model"]["backbone_weights"] == weights
        and card["config"]["train"]["epochs"] == 2
    )
    again = CliRunner().invoke(cli, bootstrap)
    assert again.exit_code == 1 and f"already has champion {champion}; nothing done" in again.output

    nightly = deployed_flow(NIGHTLY_RETRAIN, task_runner).with_options(retries=0)
    skipped = nightly()
    assert (
        skipped["skipped"] is True
        and skipped["version"] == champion
        and skipped["promoted"] is False
    )
    assert skipped["reason"].startswith(f"nothing changed since champion {champion}")
    assert skipped["configuration"]["backbone_weights"] == "variable aml_smear_backbone_weights"
    assert Artifact.get("retrain-report").data.startswith("# Training skipped")
    assert sorted(p.name for p in (store / "models").iterdir() if p.is_dir()) == [champion]

    # A changed variable changes the next run; nothing is deployed again.
    variables(aml_smear_epochs=3)
    trained = nightly()
    assert trained["skipped"] is False and trained["version"] != champion
    assert trained["configuration"]["epochs"] == "variable aml_smear_epochs"
    card = json.loads((store / "models" / trained["version"] / "model_card.json").read_text())
    assert card["config"]["train"]["epochs"] == 3 and card["code_version"] == CLEAN
