"""aml-smear runs: listing, showing and pruning the run store, on local disk and on the moto S3 server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from click.testing import CliRunner

from app.cli import cli
from tasks.run_admin import list_runs, plan_prune_runs, prune_runs
from tasks.store import Store, join
from tasks.store_layout import RunPaths

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _run(
    store: str,
    run_id: str,
    days_ago: float | None,
    scorings: dict[str, float | None] | None = None,
    options: dict | None = None,
) -> RunPaths:
    """An ingest run completed ``days_ago`` (None: never completed) with scorings {id: days ago or None}."""
    at = Store(store, options or {})
    run = at.run(run_id)
    at.write_json(run.plan, {"fingerprint": run_id})
    if days_ago is not None:
        at.write_json(run.report, {"counts": {"cells": 12, "quarantined": 0}})
        at.write_json(run.success, {"completed_at": (NOW - timedelta(days=days_ago)).isoformat()})
    for score_id, score_days in (scorings or {}).items():
        scoring = run.scoring(score_id)
        at.write_json(
            scoring.settings,
            {"model_version": "v1", "threshold": 0.5, "blast_cutoff": 0.2, "min_cells": 100},
        )
        if score_days is not None:
            at.write_json(
                scoring.success, {"completed_at": (NOW - timedelta(days=score_days)).isoformat()}
            )
    return run


def _store(root: str, options: dict | None = None) -> str:
    _run(root, "fresh", 1, {"v1-a": 1}, options)
    _run(root, "old", 40, {"v1-a": 39, "v2-b": None}, options)
    _run(root, "old-ingest-new-scoring", 40, {"v1-a": 2}, options)
    _run(root, "trained-on", 60, {}, options)
    Store(root, options or {}).write_json(
        join(root, "models", "v1", "model_card.json"),
        {"version": "v1", "data": {"runs": [join(root, "runs", "trained-on")]}},
    )
    return root


def test_list_runs_gives_state_cells_scorings_and_last_activity(tmp_path):
    store = _store(str(tmp_path / "store"))
    _run(store, "interrupted", None)
    entries = {entry.run_id: entry for entry in list_runs(Store(store))}
    assert sorted(entries) == [
        "fresh",
        "interrupted",
        "old",
        "old-ingest-new-scoring",
        "trained-on",
    ]
    old = entries["old"]
    assert old.complete and old.cells == 12 and not old.legacy
    assert [(s["score_id"], s["complete"]) for s in old.scorings] == [
        ("v1-a", True),
        ("v2-b", False),
    ]
    assert old.last_activity == NOW - timedelta(days=39), "the newest completion, scorings included"
    assert entries["old-ingest-new-scoring"].last_activity == NOW - timedelta(days=2)
    interrupted = entries["interrupted"]
    assert not interrupted.complete and interrupted.cells is None and interrupted.failure is None
    assert interrupted.last_activity is not None and abs(
        interrupted.last_activity - datetime.now(UTC)
    ) < timedelta(minutes=5), "a run that never completed is as old as its plan file"


def test_prune_removes_old_runs_only_and_keeps_what_a_model_was_trained_on(tmp_path):
    store = _store(str(tmp_path / "store"))
    plan = plan_prune_runs(Store(store), 30, now=NOW)
    assert plan.remove == ("old",)
    assert plan.kept_old == {"trained-on": "model v1 was trained on it"}
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    dry = prune_runs(Store(store), 30, dry_run=True, now=NOW)
    assert dry == plan and sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    prune_runs(Store(store), 30, now=NOW)
    assert sorted(Store(store).list_names(join(store, "runs"))) == [
        "fresh",
        "old-ingest-new-scoring",
        "trained-on",
    ]
    assert prune_runs(Store(store), 0.5, now=NOW).remove == ("fresh", "old-ingest-new-scoring")


def test_runs_commands_on_s3(s3_bucket, s3_endpoint):
    bucket, options = s3_bucket
    store = _store(f"s3://{bucket}/store", options)
    listed = CliRunner().invoke(
        cli, ["runs", "list", "--store", store, "--s3-endpoint-url", s3_endpoint]
    )
    assert listed.exit_code == 0, listed.output
    assert "old  complete, 12 cells, last activity" in listed.output
    assert (
        "  scoring v2-b  incomplete  model v1, threshold 0.5, blast cut-off 20%, min cells 100"
        in listed.output
    )
    _finish_scoring(store, "fresh", "v1-a", options)
    shown = CliRunner().invoke(
        cli, ["runs", "show", "fresh", "--store", store, "--s3-endpoint-url", s3_endpoint]
    )
    assert shown.exit_code == 0, shown.output
    assert f"patient reports: {store}/runs/fresh/scores/v1-a/reports/index.html" in shown.output
    # The CLI measures age from the real clock: with 0 days every completed run is old enough.
    dry = CliRunner().invoke(
        cli,
        [
            "runs",
            "prune",
            "--older-than",
            "0",
            "--dry-run",
            "--store",
            store,
            "--s3-endpoint-url",
            s3_endpoint,
        ],
    )
    assert dry.exit_code == 0, dry.output
    assert "would remove 3 runs: fresh, old, old-ingest-new-scoring" in dry.output
    assert "kept trained-on: model v1 was trained on it" in dry.output
    assert len(Store(store, options).list_names(join(store, "runs"))) == 4
    pruned = CliRunner().invoke(
        cli,
        ["runs", "prune", "--older-than", "0", "--store", store, "--s3-endpoint-url", s3_endpoint],
    )
    assert pruned.exit_code == 0 and "removed 3 runs" in pruned.output, pruned.output
    assert Store(store, options).list_names(join(store, "runs")) == ["trained-on"]


def test_prune_needs_a_non_negative_age(tmp_path):
    refused = CliRunner().invoke(
        cli, ["runs", "prune", "--older-than", "-1", "--store", str(tmp_path)]
    )
    assert refused.exit_code == 2 and "--older-than" in refused.output


def test_a_failed_run_and_a_failed_scoring_are_listed_as_failed_with_their_reasons(tmp_path):
    store = str(tmp_path / "store")
    failed_at = (NOW - timedelta(days=3)).isoformat()
    run = _run(store, "broken", None)
    run.store.write_json(
        run.failed,
        {"failed_at": failed_at, "reason": "PermissionError: cannot write cells.parquet"},
    )
    scored = _run(store, "scored", 5, {"v1-a": None})
    scored.store.write_json(
        scored.scoring("v1-a").failed,
        {"failed_at": failed_at, "reason": "OSError: model unreadable"},
    )
    entries = {entry.run_id: entry for entry in list_runs(Store(store))}
    assert entries["broken"].failure["reason"] == "PermissionError: cannot write cells.parquet"
    assert entries["broken"].last_activity == NOW - timedelta(days=3), "a failure is activity too"
    listed = CliRunner().invoke(cli, ["runs", "list", "--store", store])
    assert listed.exit_code == 0, listed.output
    assert (
        "broken  failed (PermissionError: cannot write cells.parquet), cells n/a" in listed.output
    )
    assert "scored  complete, 12 cells" in listed.output
    assert "  scoring v1-a  failed (OSError: model unreadable)  model v1" in listed.output


def _finish_scoring(
    store: str, run_id: str, score_id: str, options: dict | None = None, **settings
) -> None:
    """Give a scoring of ``_run`` what a complete one holds: settings, patients, quarantine, markers, reports."""
    at = Store(store, options or {})
    run = at.run(run_id)
    scoring = run.scoring(score_id)
    at.write_json(
        scoring.settings,
        {
            "model_version": "v1",
            "threshold": 0.5,
            "blast_cutoff": 0.2,
            "min_cells": 100,
            "precision": "auto",
            **settings,
        },
    )
    patients = pd.DataFrame(
        {
            "patient_id": ["P1", "P2"],
            "n_scored": [120, 0],
            "n_blast_like": [60, 0],
            "blast_fraction": [0.5, float("nan")],
            "ci_low": [0.41, float("nan")],
            "ci_high": [0.59, float("nan")],
            "call": ["AML_SUSPECTED", "INSUFFICIENT_CELLS"],
        }
    )
    at.write_table(patients, scoring.patients_table)
    at.write_table(
        pd.DataFrame(
            {
                "source_uri": ["/smears/P2/b.jpg", "/smears/P1/a.tif"],
                "patient_id": ["P2", "P1"],
                "reason": ["truncated JPEG", "unsupported mode"],
            }
        ),
        run.quarantine_table,
    )
    at.write_json(scoring.shard_marker("score", 0), {"precision": "bfloat16"})
    at.write_bytes(scoring.report_index, b"<html></html>")
    at.write_json(scoring.success, {"completed_at": NOW.isoformat()})


def test_runs_show_prints_the_settings_calls_quarantined_files_and_report(tmp_path):
    store = str(tmp_path / "store")
    _run(store, "cohort", 2)
    _finish_scoring(store, "cohort", "v1-a")
    _finish_scoring(
        store,
        "cohort",
        "v1-b",
        threshold=0.7,
        min_cells=50,
        site="lab-b",
        site_operating_point="fraction",
        reused_probabilities_from="v1-a",
    )
    _run(
        store, "cohort", 2, {"v1-c": None}
    )  # an incomplete scoring is never the one shown by default

    latest = CliRunner().invoke(cli, ["runs", "show", "cohort", "--store", store])
    assert latest.exit_code == 0, latest.output
    lines = latest.output.splitlines()
    assert lines[0] == (
        f"run cohort, scoring v1-b, completed {NOW.isoformat()} -> {store}/runs/cohort/scores/v1-b"
    )
    assert lines[1] == (
        "model v1, threshold 0.7, blast cut-off 20%, min cells 50, site lab-b at its fraction "
        "operating point (calibrated scale), precision auto (scored in bfloat16)"
    )
    assert (
        lines[2] == "probabilities copied from scoring v1-a (the same model, precision and cells)"
    )
    assert any(line.startswith("P1 ") and line.endswith("AML_SUSPECTED") for line in lines)
    assert any(
        line.startswith("P2 ") and "n/a" in line and line.endswith("INSUFFICIENT_CELLS")
        for line in lines
    )
    at = lines.index(f"2 quarantined inputs ({store}/runs/cohort/quarantine.parquet):")
    assert lines[at + 1 : at + 3] == [
        "  P1  /smears/P1/a.tif: unsupported mode",
        "  P2  /smears/P2/b.jpg: truncated JPEG",
    ]
    assert lines[-1] == f"patient reports: {store}/runs/cohort/scores/v1-b/reports/index.html"

    named = CliRunner().invoke(cli, ["runs", "show", "cohort", "--score", "v1-a", "--store", store])
    assert named.exit_code == 0, named.output
    assert (
        "model v1, threshold 0.5, blast cut-off 20%, min cells 100, precision auto" in named.output
    )
    assert "copied from" not in named.output and "site" not in named.output

    listed = CliRunner().invoke(cli, ["runs", "list", "--store", store])
    assert (
        "  scoring v1-b  complete  model v1, threshold 0.7, blast cut-off 20%, min cells 50, site lab-b at its "
        "fraction operating point (calibrated scale), probabilities of v1-a" in listed.output
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["nowhere"], "error: no run nowhere in {store}"),
        (
            ["cohort", "--score", "v9-z"],
            "error: run cohort has no scoring v9-z; its scorings: v1-a, v1-c",
        ),
        (
            ["cohort", "--score", "v1-c"],
            "error: scoring v1-c of run cohort in {store} is incomplete",
        ),
        (["../cohort"], "error: run id '../cohort' is not one: letters, digits"),
        (["..", "--score", "v1-a"], "error: run id '..' is not one"),
        (["cohort", "--score", "v1-a/../../x"], "error: score id 'v1-a/../../x' is not one"),
    ],
)
def test_runs_show_refuses_an_unknown_or_path_like_run_or_scoring_in_one_line(
    tmp_path, arguments, message
):
    store = str(tmp_path / "store")
    _run(store, "cohort", 2, {"v1-c": None})
    _finish_scoring(store, "cohort", "v1-a")
    refused = CliRunner().invoke(cli, ["runs", "show", *arguments, "--store", store])
    assert refused.exit_code == 1, refused.output
    assert refused.output.startswith(message.format(store=store)), refused.output
    assert len(refused.output.splitlines()) == 1
