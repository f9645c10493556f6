"""`aml-smear models`: list, show, compare, promote, rollback and prune on a real store folder (and S3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli import cli
from tasks.events import MODEL_PROMOTED
from tasks.registry import set_champion
from tasks.store import Store
from tests.flows.prefect_events import read_events
from tests.registry_fakes import fake_model, fake_scoring

V1, V2, V3, V4 = (f"2026010{day}T020000Z-0000000{day}" for day in range(1, 5))


def run(*args: str):
    return CliRunner().invoke(cli, ["models", *args])


def champion(store: Path) -> str:
    return json.loads((store / "models" / "champion.json").read_text())["version"]


@pytest.fixture
def store(tmp_path) -> Path:
    """V1..V4 registered, V1 then V2 promoted."""
    registry = Store(str(tmp_path / "store"))
    for number, version in enumerate((V1, V2, V3, V4)):
        fake_model(registry, version, roc_auc=0.90 + number / 100)
    set_champion(registry, V1)
    set_champion(registry, V2)
    return tmp_path / "store"


def test_list_and_show(store):
    listed = run("list", "--store", str(store))
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0].split() == [
        "version",
        "registered",
        "recipe",
        "ROC",
        "AUC",
        "sensitivity",
        "specificity",
        "test",
        "cells",
        "status",
    ]
    assert [line.split()[0] for line in lines[1:]] == [V1, V2, V3, V4]
    assert lines[2].split()[1:] == [
        "2026-01-02",
        "02:00",
        "paper",
        "0.910",
        "0.850",
        "0.950",
        "200",
        "champion",
    ]
    assert lines[1].endswith("previous champion") and lines[3].endswith("candidate")

    shown = run("show", "champion", "--store", str(store))
    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith(f"model {V2} (champion)\n")
    assert "roc_auc 0.910" in shown.output and f"code:          {'c' * 12}\n" in shown.output
    as_json = run("show", V3, "--store", str(store), "--json")
    assert json.loads(as_json.output)["version"] == V3


def test_an_empty_registry_says_how_to_fill_it(tmp_path):
    result = run("list", "--store", str(tmp_path))
    assert (
        result.exit_code == 0
        and "no models in" in result.output
        and "aml-smear retrain" in result.output
    )


def test_compare_prints_both_cards_side_by_side(store):
    result = run("compare", V1, V4, "--store", str(store))
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1:] for line in result.output.splitlines()}
    assert rows["roc_auc"] == ["0.900", "0.930", "+0.030"]
    assert rows["sensitivity"] == ["0.850", "0.850", "+0.000"]
    assert rows["recipe"] == ["paper", "paper"]
    assert (
        "not a paired comparison" not in result.output
    )  # same data and split: the same test cells


def test_promote_and_rollback(store):
    promoted = run("promote", V4, "--store", str(store))
    assert promoted.exit_code == 0, promoted.output
    assert promoted.output.strip() == f"champion of {store}: {V4} (was {V2})"
    assert champion(store) == V4
    again = run("promote", V4, "--store", str(store))
    assert "already the champion" in again.output and champion(store) == V4

    back = run("rollback", "--store", str(store))
    assert (
        back.exit_code == 0
        and back.output.strip() == f"champion of {store}: {V2} (rolled back from {V4})"
    )
    assert run("rollback", "--store", str(store)).exit_code == 0 and champion(store) == V1
    empty = run("rollback", "--store", str(store))
    assert empty.exit_code == 1 and empty.output.startswith("error: nothing to roll back to")
    assert len(empty.output.strip().splitlines()) == 1

    # With a Prefect API (the harness's), each change of champion is an aml-smear.model.promoted event.
    def events(version):
        found = read_events(MODEL_PROMOTED, resource_id=f"aml-smear.model.{version}")
        return [
            (e.payload["previous"], e.payload["by"])
            for e in found
            if e.payload["store"] == str(store)
        ]

    assert events(V4) == [(V2, "models promote")], (
        "promoted once: the second promote changed nothing"
    )
    assert events(V1) == [(V2, "models rollback")]


def test_promote_refuses_an_unknown_or_broken_version_with_one_line(store):
    unknown = run("promote", "v-unknown", "--store", str(store))
    assert unknown.exit_code == 1
    assert unknown.output.strip() == (
        f"error: model version v-unknown is not registered in {store}/models: "
        f"`aml-smear models list --store {store}` shows the versions there"
    )
    (store / "models" / V3 / "model.keras").unlink()
    broken = run("promote", V3, "--store", str(store))
    assert broken.exit_code == 1 and "has a card but no model.keras" in broken.output
    assert champion(store) == V2


def test_prune_dry_run_then_prune(store):
    fake_scoring(Store(str(store)), "lab-a/scores/s-1", V3)
    dry = run("prune", "--keep", "0", "--dry-run", "--store", str(store))
    assert dry.exit_code == 0, dry.output
    assert (
        f"would remove {V4}" in dry.output
        and "would remove 1 version(s), kept 3 (dry run)" in dry.output
    )
    assert (store / "models" / V4).is_dir()
    done = run("prune", "--keep", "0", "--store", str(store))
    assert done.exit_code == 0 and f"removed {V4}" in done.output
    assert f"keep   {V3}: used by {store}/runs/lab-a/scores/s-1/score.json" in done.output
    assert sorted(p.name for p in (store / "models").iterdir() if not p.name.startswith(".")) == [
        V1,
        V2,
        V3,
        "champion.json",
    ]
    assert run("prune", "--store", str(store)).exit_code == 2  # --keep is required


def test_models_commands_on_s3(s3_bucket):
    bucket, options = s3_bucket
    store = f"s3://{bucket}/store"
    endpoint = options["client_kwargs"]["endpoint_url"]
    for version in (V1, V2, V3):
        fake_model(Store(store, options), version)
    assert run("promote", V1, "--store", store, "--s3-endpoint-url", endpoint).exit_code == 0
    assert run("promote", V3, "--store", store, "--s3-endpoint-url", endpoint).exit_code == 0
    listed = run("list", "--store", store, "--s3-endpoint-url", endpoint)
    assert [line.rsplit("  ", 1)[-1] for line in listed.output.splitlines()[1:]] == [
        "previous champion",
        "candidate",
        "champion",
    ]
    pruned = run("prune", "--keep", "0", "--store", store, "--s3-endpoint-url", endpoint)
    assert pruned.exit_code == 0 and f"removed {V2}" in pruned.output
    back = run("rollback", "--store", store, "--s3-endpoint-url", endpoint)
    assert (
        back.exit_code == 0
        and back.output.strip() == f"champion of {store}: {V1} (rolled back from {V3})"
    )
