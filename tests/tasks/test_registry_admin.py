"""Operating the registry on real files: list, promote and roll back the champion, prune."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

import tasks.store as store_module
from tasks.registry import (
    ModelNotFoundError,
    RegistryError,
    read_champion,
    resolve_model,
    rollback_champion,
    set_champion,
)
from tasks.registry_admin import (
    compare_cards,
    list_models,
    model_references,
    plan_prune,
    prune_models,
)
from tasks.store import Store
from tests.registry_fakes import fake_model, fake_scoring

V1, V2, V3, V4, V5 = (f"2026010{day}T020000Z-0000000{day}" for day in range(1, 6))


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def store(tmp_path) -> Store:
    """Five complete versions, V1 oldest; V2 then V3 promoted (V3 champion, V2 before it)."""
    store = Store(str(tmp_path / "store"))
    for number, version in enumerate((V1, V2, V3, V4, V5)):
        fake_model(store, version, roc_auc=0.90 + number / 100)
    set_champion(store, V2, reason="first")
    set_champion(store, V3, reason="better")
    return store


def test_list_orders_by_registration_and_names_champion_previous_and_incomplete(store, tmp_path):
    fake_model(store, "20251231T235900Z-half0000", card=False)  # a registration cut short
    (
        tmp_path / "store" / "models" / "not-a-model"
    ).mkdir()  # neither card nor model file: not listed
    entries = list_models(store)
    assert [e.version for e in entries] == ["20251231T235900Z-half0000", V1, V2, V3, V4, V5]
    assert {e.version: e.status for e in entries} == {
        "20251231T235900Z-half0000": "incomplete",
        V1: "candidate",
        V2: "previous champion",
        V3: "champion",
        V4: "candidate",
        V5: "candidate",
    }
    assert "not completely registered" in entries[0].problem and entries[0].card is None
    assert entries[3].card["metrics"]["roc_auc"] == pytest.approx(0.92)


def test_promote_moves_the_pointer_in_one_write_and_keeps_the_history(store, tmp_path):
    set_champion(store, V5, reason="by hand")
    pointer = read_champion(store)
    assert (pointer["version"], pointer["reason"]) == (V5, "by hand")
    assert [entry["version"] for entry in pointer["history"]] == [V2, V3]
    assert resolve_model("champion", store).version == V5
    # Written as the flows write it: one file (beside the lock file of its compare-and-swap), no partial one.
    assert sorted(p.name for p in (tmp_path / "store" / "models").iterdir() if p.is_file()) == [
        ".champion.json.lock",
        "champion.json",
    ]
    assert pointer["serial"] == read_champion(store)["serial"] and pointer["serial"] >= 1


def test_a_promotion_cut_short_leaves_the_old_pointer_whole(store, tmp_path, monkeypatch):
    before = (tmp_path / "store" / "models" / "champion.json").read_bytes()

    def crash(*_args):
        raise OSError("disk gone")

    monkeypatch.setattr(
        store_module.os, "replace", crash
    )  # the rename that puts the new pointer in place
    with pytest.raises(OSError, match="disk gone"):
        set_champion(store, V5)
    monkeypatch.undo()
    assert (tmp_path / "store" / "models" / "champion.json").read_bytes() == before
    assert read_champion(store)["version"] == V3
    assert [e.version for e in list_models(store)] == [
        V1,
        V2,
        V3,
        V4,
        V5,
    ]  # the partial file is no version


def test_promote_checks_the_version_before_touching_the_pointer(store, tmp_path):
    models = tmp_path / "store" / "models"
    before = (models / "champion.json").read_bytes()
    with pytest.raises(
        ModelNotFoundError,
        match="model version 20990101T000000Z-none is not registered in .*"
        "aml-smear models list --store",
    ):
        set_champion(store, "20990101T000000Z-none")
    (models / V4 / "model_card.json").write_text("{not json")
    with pytest.raises(
        RegistryError, match=f"the card of model version {V4} .* is not readable JSON"
    ):
        set_champion(store, V4)
    (models / V5 / "model.keras").unlink()
    with pytest.raises(
        ModelNotFoundError, match=f"model version {V5} has a card but no model.keras"
    ):
        set_champion(store, V5)
    (models / V1 / "model_card.json").write_text(json.dumps({"version": V2}))
    with pytest.raises(RegistryError, match=f"is not the card of model version {V1}"):
        set_champion(store, V1)
    with pytest.raises(RegistryError, match="is not a model version name"):
        set_champion(store, "../../elsewhere")
    assert (models / "champion.json").read_bytes() == before


def test_rollback_returns_to_each_earlier_champion_in_turn(store):
    set_champion(store, V4)
    assert rollback_champion(store) == (V4, V3)
    assert read_champion(store)["reason"] == f"rolled back from {V4}"
    assert rollback_champion(store) == (V3, V2)
    assert resolve_model("champion", store).version == V2
    with pytest.raises(
        RegistryError, match=f"nothing to roll back to .* no champion before {V2} is recorded"
    ):
        rollback_champion(store)
    assert read_champion(store)["version"] == V2


def test_rollback_refuses_a_previous_champion_that_is_gone(store, tmp_path):
    store.remove(str(tmp_path / "store" / "models" / V2), recursive=True)
    with pytest.raises(
        ModelNotFoundError,
        match=f"cannot roll back to the previous champion {V2}: .*not registered",
    ):
        rollback_champion(store)
    assert read_champion(store)["version"] == V3


def test_a_pointer_written_before_history_was_kept_still_promotes_and_rolls_back(tmp_path):
    store = Store(str(tmp_path / "store"))
    fake_model(store, V1)
    fake_model(store, V2)
    store.write_json(
        str(tmp_path / "store" / "models" / "champion.json"), {"version": V1, "reason": "old"}
    )
    with pytest.raises(RegistryError, match="no champion before"):
        rollback_champion(store)
    set_champion(store, V2)
    assert rollback_champion(store) == (V2, V1)


def test_compare_puts_both_cards_test_metrics_side_by_side(store):
    a, b = (
        json.loads(Path(store.url, "models", v, "model_card.json").read_text()) for v in (V1, V4)
    )
    facts, metrics, same_cells = compare_cards(a, b)
    assert dict((name, (x, y)) for name, x, y in metrics)["roc_auc"] == pytest.approx((0.90, 0.93))
    assert [name for name, _, _ in metrics] == [
        "test cells",
        "roc_auc",
        "accuracy",
        "sensitivity",
        "specificity",
        "precision",
        "f1",
    ]
    assert ("recipe", "paper", "paper") in facts and same_cells
    b["data"]["sha256"] = "e" * 64
    assert not compare_cards(a, b)[2]


def test_references_are_read_from_score_json_at_any_depth(store):
    fake_scoring(store, "lab-a", V1)  # runs/<run>/score.json
    fake_scoring(store, "lab-b/scores/s-1", V4)  # runs/<ingest>/scores/<scoring>/score.json
    fake_scoring(store, "lab-b/scores/s-2", V4)
    store.write_json(
        str(Path(store.url, "runs", "lab-b", "cells.zarr", "score.json")), {"model_version": V5}
    )
    references = model_references(store)
    assert sorted(references) == [V1, V4]
    assert sorted(references[V4]) == [
        str(Path(store.url, "runs", "lab-b", "scores", s, "score.json")) for s in ("s-1", "s-2")
    ]


def test_prune_keeps_champion_previous_newest_and_what_runs_use(store, tmp_path):
    fake_scoring(store, "lab-a/scores/s-1", V1)
    plan = plan_prune(store, 1)
    assert plan.remove == [V4]
    assert plan.keep == {
        V1: "used by " + str(Path(store.url, "runs", "lab-a", "scores", "s-1", "score.json")),
        V2: "previous champion",
        V3: "champion",
        V5: "one of the 1 newest",
    }
    done = prune_models(store, 1)
    assert done.remove == [V4]
    assert sorted(
        p.name for p in (tmp_path / "store" / "models").iterdir() if not p.name.startswith(".")
    ) == [V1, V2, V3, V5, "champion.json"]
    assert resolve_model("champion", store).version == V3
    assert rollback_champion(store) == (V3, V2)


def test_prune_dry_run_changes_nothing(store, tmp_path):
    before = tree(tmp_path / "store")
    plan = prune_models(store, 0, dry_run=True)
    assert plan.remove == [V1, V4, V5]
    assert tree(tmp_path / "store") == before


def test_prune_leaves_a_young_incomplete_version_and_removes_an_old_one(store, tmp_path):
    fake_model(store, "20260105T030000Z-young000", card=False)
    fake_model(store, "20251201T000000Z-old00000", card=False)
    plan = plan_prune(store, 5, now=datetime(2026, 1, 5, 12, tzinfo=UTC))
    assert plan.remove == ["20251201T000000Z-old00000"]
    assert plan.keep["20260105T030000Z-young000"] == "incomplete, may be registering now"


def test_prune_refuses_when_a_scoring_record_is_unreadable(store, tmp_path):
    before = tree(tmp_path / "store" / "models")
    Path(store.url, "runs", "lab-a").mkdir(parents=True)
    Path(store.url, "runs", "lab-a", "score.json").write_text("{cut short")
    with pytest.raises(
        RegistryError, match="cannot tell which model the scoring .*lab-a/score.json used"
    ):
        prune_models(store, 0)
    assert tree(tmp_path / "store" / "models") == before


def test_registry_operations_on_s3(s3_bucket):
    bucket, options = s3_bucket
    store = Store(f"s3://{bucket}/store", options)
    for version in (V1, V2, V3, V4):
        fake_model(store, version)
    set_champion(store, V1)
    set_champion(store, V2)
    fake_scoring(store, "lab-a/scores/s-1", V3)
    assert [(e.version, e.status) for e in list_models(store)] == [
        (V1, "previous champion"),
        (V2, "champion"),
        (V3, "candidate"),
        (V4, "candidate"),
    ]
    assert list(model_references(store)) == [V3]
    with pytest.raises(ModelNotFoundError, match="not registered"):
        set_champion(store, V5)
    assert prune_models(store, 0).remove == [V4]
    assert not store.exists(f"{store.url}/models/{V4}/model.keras")
    assert [e.version for e in list_models(store)] == [V1, V2, V3]
    assert rollback_champion(store) == (V2, V1)
    assert resolve_model("champion", store).version == V1


def test_a_version_a_prune_has_marked_cannot_be_promoted_until_the_mark_is_lifted_or_stale(store):
    from datetime import timedelta

    from tasks.registry import PRUNE_MARK_TTL, update_champion

    def mark(since: datetime):
        return lambda current: {**current, "pruning": [{"version": V4, "since": since.isoformat()}]}

    update_champion(store, mark(datetime.now(UTC)))  # as prune_models marks V4 before removing it
    with pytest.raises(
        RegistryError, match=f"model version {V4} is being removed by `aml-smear models prune`"
    ):
        set_champion(store, V4)
    assert read_champion(store)["version"] == V3
    # A mark older than PRUNE_MARK_TTL is one a killed prune left: it no longer blocks.
    update_champion(store, mark(datetime.now(UTC) - PRUNE_MARK_TTL - timedelta(seconds=1)))
    assert set_champion(store, V4)["version"] == V4


def test_prune_lifts_its_marks_and_counts_every_pointer_write(store):
    before = read_champion(store)["serial"]
    assert prune_models(store, keep_newest=0).remove == [V1, V4, V5]
    pointer = read_champion(store)
    assert pointer["pruning"] == [] and pointer["serial"] == before + 2, (
        "one write to mark, one to lift"
    )
    assert (pointer["version"], pointer["history"][-1]["version"]) == (V3, V2)
