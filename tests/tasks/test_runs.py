"""Run and scoring completion: _SUCCESS written last, readers refuse what lacks it, scorings never rewritten."""

from __future__ import annotations

import pytest

from tasks import storage
from tasks.runs import (IncompleteRunError, RunConflictError, derive_score_id, list_scorings, mark_complete,
                        open_scoring, recorded_completion, recorded_failure, recording_failure, require_complete)

SETTINGS = {"model_version": "m1", "threshold": 0.5, "blast_cutoff": 0.2, "min_cells": 100}


def test_a_score_id_is_the_model_and_a_hash_of_the_other_settings():
    assert derive_score_id(SETTINGS) == derive_score_id(dict(reversed(SETTINGS.items())))
    assert derive_score_id(SETTINGS).startswith("m1-")
    assert derive_score_id({**SETTINGS, "min_cells": 20}) != derive_score_id(SETTINGS)
    assert derive_score_id({**SETTINGS, "model_version": "m2"}).split("-")[1] == derive_score_id(SETTINGS).split("-")[1]


def test_a_scoring_is_complete_only_once_marked_and_never_rewritten_with_other_settings(tmp_path):
    scoring = storage.RunPaths(str(tmp_path / "store"), "run-1").scoring("s1")
    assert open_scoring(scoring, SETTINGS) is False
    with pytest.raises(IncompleteRunError, match="scoring s1 of run run-1 .* is incomplete"):
        require_complete(scoring)
    assert open_scoring(scoring, SETTINGS) is False, "the same settings resume an incomplete scoring"
    mark_complete(scoring)
    require_complete(scoring)
    assert recorded_completion(scoring.success) is not None
    assert open_scoring(scoring, SETTINGS) is True
    with pytest.raises(RunConflictError, match=r"other settings \(min_cells differ\)"):
        open_scoring(scoring, {**SETTINGS, "min_cells": 20})
    assert storage.read_json(scoring.settings) == SETTINGS


def test_an_empty_success_marker_is_complete_with_no_time(tmp_path):
    run = storage.RunPaths(str(tmp_path / "store"), "run-1")
    storage.write_bytes(run.success, b"")
    require_complete(run)
    assert recorded_completion(run.success) is None


def test_a_failure_is_recorded_where_the_work_left_something_incomplete_and_cleared_by_a_rerun(tmp_path):
    store = str(tmp_path / "store")
    run = storage.RunPaths(store, "run-1")
    scoring = run.scoring("s1")
    with pytest.raises(PermissionError), recording_failure([run, scoring]):
        raise PermissionError("refused before anything was written")
    assert not storage.exists(run.root), "a failure before the first write leaves no run"

    storage.write_json(run.plan, {"fingerprint": "f"})
    mark_complete(run)
    open_scoring(scoring, SETTINGS)
    with pytest.raises(RuntimeError), recording_failure([run, scoring]):
        raise RuntimeError("worker lost\n  twice")
    assert recorded_failure(run) is None and not storage.exists(run.failed), "a complete run did not fail"
    assert recorded_failure(scoring)["reason"] == "RuntimeError: worker lost twice"
    assert list_scorings(run)[0]["failure"]["reason"] == "RuntimeError: worker lost twice"
    with pytest.raises(IncompleteRunError, match=r"it failed \(RuntimeError: worker lost twice\); rerun it"):
        require_complete(scoring)

    with recording_failure([scoring]):
        assert recorded_failure(scoring) is None, "a resuming rerun is not listed as failed while it runs"
        mark_complete(scoring)
    assert list_scorings(run)[0]["failure"] is None
