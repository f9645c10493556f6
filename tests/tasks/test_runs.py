"""Run and scoring completion: _SUCCESS written last, readers refuse what lacks it, scorings never rewritten."""

from __future__ import annotations

import pytest

from tasks.runs import (
    REUSED_FROM,
    IncompleteRunError,
    RunConflictError,
    check_id,
    derive_score_id,
    list_scorings,
    mark_complete,
    open_scoring,
    recorded_completion,
    recorded_failure,
    recording_failure,
    require_complete,
    reusable_probabilities,
)
from tasks.store import Store

SETTINGS = {"model_version": "m1", "threshold": 0.5, "blast_cutoff": 0.2, "min_cells": 100}


def test_a_score_id_is_the_model_and_a_hash_of_the_other_settings():
    assert derive_score_id(SETTINGS) == derive_score_id(dict(reversed(SETTINGS.items())))
    assert derive_score_id(SETTINGS).startswith("m1-")
    assert derive_score_id({**SETTINGS, "min_cells": 20}) != derive_score_id(SETTINGS)
    assert (
        derive_score_id({**SETTINGS, "model_version": "m2"}).split("-")[1]
        == derive_score_id(SETTINGS).split("-")[1]
    )


def test_a_scoring_is_complete_only_once_marked_and_never_rewritten_with_other_settings(tmp_path):
    scoring = Store(str(tmp_path / "store")).run("run-1").scoring("s1")
    assert open_scoring(scoring, SETTINGS) is False
    with pytest.raises(IncompleteRunError, match="scoring s1 of run run-1 .* is incomplete"):
        require_complete(scoring)
    assert open_scoring(scoring, SETTINGS) is False, (
        "the same settings resume an incomplete scoring"
    )
    mark_complete(scoring)
    require_complete(scoring)
    assert recorded_completion(scoring.store, scoring.success) is not None
    assert open_scoring(scoring, SETTINGS) is True
    with pytest.raises(RunConflictError, match=r"other settings \(min_cells differ\)"):
        open_scoring(scoring, {**SETTINGS, "min_cells": 20})
    assert scoring.store.read_json(scoring.settings) == SETTINGS


def test_an_empty_success_marker_is_complete_with_no_time(tmp_path):
    run = Store(str(tmp_path / "store")).run("run-1")
    run.store.write_bytes(run.success, b"")
    require_complete(run)
    assert recorded_completion(run.store, run.success) is None


def test_a_failure_is_recorded_where_the_work_left_something_incomplete_and_cleared_by_a_rerun(
    tmp_path,
):
    store = Store(str(tmp_path / "store"))
    run = store.run("run-1")
    scoring = run.scoring("s1")
    with pytest.raises(PermissionError), recording_failure([run, scoring]):
        raise PermissionError("refused before anything was written")
    assert not store.exists(run.root), "a failure before the first write leaves no run"

    store.write_json(run.plan, {"fingerprint": "f"})
    mark_complete(run)
    open_scoring(scoring, SETTINGS)
    with pytest.raises(RuntimeError), recording_failure([run, scoring]):
        raise RuntimeError("worker lost\n  twice")
    assert recorded_failure(run) is None and not store.exists(run.failed), (
        "a complete run did not fail"
    )
    assert recorded_failure(scoring)["reason"] == "RuntimeError: worker lost twice"
    assert list_scorings(run)[0]["failure"]["reason"] == "RuntimeError: worker lost twice"
    with pytest.raises(
        IncompleteRunError, match=r"it failed \(RuntimeError: worker lost twice\); rerun it"
    ):
        require_complete(scoring)

    with recording_failure([scoring]):
        assert recorded_failure(scoring) is None, (
            "a resuming rerun is not listed as failed while it runs"
        )
        mark_complete(scoring)
    assert list_scorings(run)[0]["failure"] is None


def test_probabilities_are_reused_only_from_a_complete_scoring_of_the_same_model_and_precision(
    tmp_path,
):
    run = Store(str(tmp_path / "store")).run("run-1")
    settings = {**SETTINGS, "precision": "auto"}
    for score_id, recorded, complete in (
        ("old", settings, True),
        ("fp32", {**settings, "precision": "float32"}, True),
        ("m2", {**settings, "model_version": "m2"}, True),
        ("latest", {**settings, "min_cells": 7}, True),
        ("unfinished", {**settings, "threshold": 0.4}, False),
    ):
        open_scoring(run.scoring(score_id), recorded)
        if complete:
            mark_complete(run.scoring(score_id))
    rescoring = run.scoring("new")
    assert reusable_probabilities(rescoring, {**settings, "threshold": 0.3}).score_id == "latest"
    assert reusable_probabilities(run.scoring("latest"), settings).score_id == "old", "never itself"
    assert reusable_probabilities(rescoring, {**settings, "precision": "bfloat16"}) is None
    assert reusable_probabilities(rescoring, {**settings, "model_version": "m3"}) is None


def test_where_the_probabilities_came_from_is_recorded_but_is_no_setting(tmp_path):
    scoring = Store(str(tmp_path / "store")).run("run-1").scoring(derive_score_id(SETTINGS))
    assert open_scoring(scoring, SETTINGS, reused_from="m1-aaaa") is False
    assert scoring.store.read_json(scoring.settings) == {**SETTINGS, REUSED_FROM: "m1-aaaa"}
    # Resumed without a scoring to copy from: the same settings, and the record says so.
    assert open_scoring(scoring, SETTINGS) is False
    assert scoring.store.read_json(scoring.settings) == SETTINGS
    open_scoring(scoring, SETTINGS, reused_from="m1-bbbb")
    mark_complete(scoring)
    assert open_scoring(scoring, SETTINGS, reused_from="m1-cccc") is True
    assert scoring.store.read_json(scoring.settings)[REUSED_FROM] == "m1-bbbb", (
        "a finished scoring is never rewritten"
    )
    with pytest.raises(RunConflictError, match=r"\(min_cells differ\)"):
        open_scoring(scoring, {**SETTINGS, "min_cells": 5}, reused_from="m1-bbbb")


@pytest.mark.parametrize("value", ["..", ".", "../run", "a/b", "a\\b", "", ".hidden", "x" * 129])
def test_an_id_that_is_not_one_folder_name_is_refused(value):
    with pytest.raises(ValueError, match="is not one: letters, digits"):
        check_id(value)
    assert check_id("cohort-0123abcd.v2_x") == "cohort-0123abcd.v2_x"
