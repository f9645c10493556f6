"""The run store keeps finished results: an ingest run decoded once, scorings added beside it, never rewritten.

Scoring ids, reuse of decoded cells and of probabilities, new-arrival scoring (``--new-only``) on
local disk and on the moto S3 server, and the refusal of a store in the old layout.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from prefect.exceptions import ParameterTypeError

from app.cli import cli
from flows.parameters import ScoreOptions, nest_options
from flows.score import score_smears
from tasks.runs import REUSED_FROM, LegacyRunError, RunConflictError, find_scoring, list_scorings
from tasks.store import Store
from tests.conftest import upload_folder
from tests.corpus import compose_patient_cohort

FAST = {"min_cells": 5, "chunk_cells": 16, "explain": False}


def run_score(task_runner, **parameters):
    return score_smears.with_options(task_runner=task_runner)(
        **nest_options(parameters, ScoreOptions)
    )


def run_score_state(task_runner, **parameters):
    """The flow run's final state, so that its task runs can be read back from the Prefect API."""
    return score_smears.with_options(task_runner=task_runner)(
        **nest_options(parameters, ScoreOptions), return_state=True
    )


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def other_model_file(tiny_model_file, tmp_path_factory) -> Path:
    """A second model: the tiny model with its output bias moved, so its probabilities differ."""
    from aml_model.io import load_model, save_model

    model = load_model(tiny_model_file, compile=False)
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([kernel, bias + 0.75])
    return save_model(model, tmp_path_factory.mktemp("other-model") / "other.keras")


def task_names(state) -> list[str]:
    """Names of the task runs of the flow run that ended in ``state``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    return [run.name for run in runs]


def test_a_finished_scoring_is_never_rewritten(
    lmu_cells, tmp_path, task_runner, tiny_model_file, other_model_file
):
    source = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (6, 6), "B": (2, 10)})
    store = str(tmp_path / "store")
    first = run_score(
        task_runner, source=str(source), store=store, model=str(tiny_model_file), **FAST
    )
    scoring = Store(store).run(first["run_id"]).scoring(first["score_id"])
    before = snapshot(Path(scoring.root))
    ingest_before = {
        name: data
        for name, data in snapshot(Path(scoring.ingest.root)).items()
        if not name.startswith("scores/")
    }

    # Other call settings, then another model: each a scoring of its own under the same ingest run.
    settings = run_score(
        task_runner,
        source=str(source),
        store=store,
        model=str(tiny_model_file),
        **{**FAST, "min_cells": 7},
    )
    other = run_score(
        task_runner, source=str(source), store=store, model=str(other_model_file), **FAST
    )
    assert settings["run_id"] == other["run_id"] == first["run_id"]
    assert len({first["score_id"], settings["score_id"], other["score_id"]}) == 3
    assert not settings["already_complete"] and not other["already_complete"]
    # An invalid value fails before anything is written.
    with pytest.raises(ParameterTypeError, match="precision"):
        run_score(
            task_runner,
            source=str(source),
            store=store,
            model=str(tiny_model_file),
            precision="fp16",
            **FAST,
        )
    # The same settings again: the finished scoring is found and left alone.
    again = run_score(
        task_runner, source=str(source), store=store, model=str(tiny_model_file), **FAST
    )
    assert again["already_complete"] and again["score_id"] == first["score_id"]

    assert snapshot(Path(scoring.root)) == before, "a finished scoring's files changed"
    ingest_after = {
        name: data
        for name, data in snapshot(Path(scoring.ingest.root)).items()
        if not name.startswith("scores/")
    }
    assert ingest_after == ingest_before, "the ingest run's files changed"

    listed = list_scorings(scoring.ingest)
    assert [s["score_id"] for s in listed] == [
        first["score_id"],
        settings["score_id"],
        other["score_id"],
    ]
    assert all(s["complete"] for s in listed)
    assert [s["settings"]["min_cells"] for s in listed] == [5, 7, 5]
    # Every scoring is readable: by name, and the latest by default.
    assert find_scoring(scoring.ingest).score_id == other["score_id"]
    first_cells = pd.read_parquet(find_scoring(scoring.ingest, first["score_id"]).cells_table)
    other_cells = pd.read_parquet(find_scoring(scoring.ingest, other["score_id"]).cells_table)
    assert (first_cells["cell_id"] == other_cells["cell_id"]).all()
    assert (other_cells["probability"] > first_cells["probability"]).all(), (
        "the second model's own scores"
    )
    assert (
        pd.read_parquet(find_scoring(scoring.ingest, settings["score_id"]).patients_table)[
            "min_cells"
        ]
        .eq(7)
        .all()
    )


def test_a_named_score_id_with_other_settings_is_refused(
    lmu_cells, tmp_path, task_runner, tiny_model_file
):
    source = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (3, 3)})
    store = str(tmp_path / "store")
    run_score(
        task_runner,
        source=str(source),
        store=store,
        model=str(tiny_model_file),
        score_id="weekly",
        **FAST,
    )
    before = snapshot(tmp_path / "store")
    with pytest.raises(
        RunConflictError,
        match="scoring weekly of run .* was made with other settings "
        r"\(min_cells differ\); a scoring is never rewritten",
    ):
        run_score(
            task_runner,
            source=str(source),
            store=store,
            model=str(tiny_model_file),
            score_id="weekly",
            **{**FAST, "min_cells": 3},
        )
    assert snapshot(tmp_path / "store") == before


def test_a_second_model_scores_ingested_cells_without_decoding_them(
    lmu_cells, tmp_path, task_runner, tiny_model_file, other_model_file
):
    source = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (50, 50), "B": (40, 60)})
    store = str(tmp_path / "store")
    first = run_score_state(
        task_runner, source=str(source), store=store, model=str(tiny_model_file), **FAST
    )
    assert any(n.startswith("ingest-shard") for n in task_names(first))
    run = Store(store).run(first.result()["run_id"])
    markers = {p.name: p.stat().st_mtime_ns for p in Path(run.root, "_shards", "ingest").iterdir()}

    second = run_score_state(
        task_runner, source=str(source), store=store, model=str(other_model_file), **FAST
    )
    result = second.result()
    assert result["run_id"] == run.run_id and result["cells"] == 200
    names = task_names(second)
    assert any(n.startswith("score-shard") for n in names)
    assert not any(n.startswith("ingest-shard") for n in names), (
        f"cells were decoded again: {names}"
    )
    assert {
        p.name: p.stat().st_mtime_ns for p in Path(run.root, "_shards", "ingest").iterdir()
    } == markers

    fresh = run_score(
        task_runner,
        source=str(source),
        store=str(tmp_path / "fresh"),
        model=str(other_model_file),
        **FAST,
    )
    reused = pd.read_parquet(run.scoring(result["score_id"]).cells_table)
    decoded = pd.read_parquet(
        Store(str(tmp_path / "fresh")).run(fresh["run_id"]).scoring(fresh["score_id"]).cells_table
    )
    assert len(reused) == 200
    pd.testing.assert_series_equal(reused["probability"], decoded["probability"])
    pd.testing.assert_frame_equal(
        pd.read_parquet(run.scoring(result["score_id"]).patients_table).drop(
            columns="patient_version"
        ),
        pd.read_parquet(
            Store(str(tmp_path / "fresh"))
            .run(fresh["run_id"])
            .scoring(fresh["score_id"])
            .patients_table
        ).drop(columns="patient_version"),
    )


def test_a_threshold_only_rescoring_copies_the_probabilities_and_runs_no_score_shard(
    lmu_cells, tmp_path, task_runner, tiny_model_file
):
    source = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (36, 4), "B": (2, 38)})
    store = str(tmp_path / "store")
    params = {
        "source": str(source),
        "store": store,
        "model": str(tiny_model_file),
        "min_cells": 5,
        "chunk_cells": 16,
        "explain_top_k": 3,
    }
    first_state = run_score_state(task_runner, **params)
    first = first_state.result()
    assert any(n.startswith("score-shard") for n in task_names(first_state))
    run = Store(store).run(first["run_id"])
    original = run.scoring(first["score_id"])
    before = snapshot(Path(original.root))

    rescored_state = run_score_state(task_runner, **params, threshold=0.6)
    rescored = rescored_state.result()
    names = task_names(rescored_state)
    assert any(n.startswith("reuse-probabilities") for n in names), names
    assert not any(
        n.startswith(("score-shard", "ingest-shard", "explain-patient")) for n in names
    ), names
    assert rescored["score_id"] != first["score_id"] and rescored[REUSED_FROM] == first["score_id"]
    assert (rescored["threshold"], rescored["blast_cutoff"], rescored["min_cells"]) == (0.6, 0.2, 5)
    copy = run.scoring(rescored["score_id"])
    assert snapshot(Path(copy.probabilities_zarr)) == snapshot(Path(original.probabilities_zarr)), (
        "the probabilities are not byte for byte the first scoring's"
    )
    assert run.store.read_json(copy.settings)[REUSED_FROM] == first["score_id"]
    assert REUSED_FROM not in run.store.read_json(original.settings)
    cells = pd.read_parquet(copy.cells_table)
    assert ((cells["probability"] >= 0.6) == (cells["predicted_label"] == "blast")).all(), (
        "called at the new threshold"
    )
    # Grad-CAM of the same cells at the same top-k is copied, not computed again.
    explained = snapshot(Path(copy.root, "explain"))
    assert explained and explained.items() <= snapshot(Path(original.root, "explain")).items()
    assert snapshot(Path(original.root)) == before, "the first scoring changed"

    # Another top-k computes Grad-CAM again, still from the copied probabilities; another precision scores.
    top_k = run_score_state(task_runner, **{**params, "explain_top_k": 2}, threshold=0.6)
    names = task_names(top_k)
    assert any(n.startswith("explain-patient") for n in names) and not any(
        n.startswith("score-shard") for n in names
    ), names
    float32 = run_score_state(task_runner, **params, precision="float32")
    assert float32.result()[REUSED_FROM] is None
    assert any(n.startswith("score-shard") for n in task_names(float32))

    # `runs show` reads a scoring back with its settings; `runs list` tells the scorings apart.
    shown = CliRunner().invoke(
        cli, ["runs", "show", run.run_id, "--score", rescored["score_id"], "--store", store]
    )
    assert shown.exit_code == 0, shown.output
    assert (
        "threshold 0.6, blast cut-off 20%, min cells 5, precision auto (scored in " in shown.output
    )
    assert f"probabilities copied from scoring {first['score_id']}" in shown.output
    assert f"patient reports: {copy.report_index}" in shown.output
    assert any(line.startswith("A ") for line in shown.output.splitlines())
    listed = CliRunner().invoke(cli, ["runs", "list", "--store", store]).output
    assert (
        f"  scoring {first['score_id']}  complete  model {first['model_version']}, threshold 0.5,"
        in listed
    )
    assert (
        f"threshold 0.6, blast cut-off 20%, min cells 5, probabilities of {first['score_id']}"
        in listed
    )


def _add(local: Path, relative: str, data: bytes, source: Store | None) -> None:
    """Put a new image into the source: a local file, or an object when the source is on S3."""
    if source is None:
        (local / relative).parent.mkdir(parents=True, exist_ok=True)
        (local / relative).write_bytes(data)
    else:
        fs, root = source.resolve()
        fs.pipe_file(f"{root}/{relative}", data)
        fs.invalidate_cache()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_new_only_scores_new_and_changed_patients_and_keeps_both_versions(
    where, lmu_cells, tmp_path, task_runner, tiny_model_file, request
):
    local = compose_patient_cohort(
        lmu_cells, tmp_path / "cohort", {"A": (3, 3), "B": (1, 5), "C": (4, 2)}
    )
    # The same real-cell pools, past the cells the cohort took: D's cells and A's extra one are new images.
    spare = compose_patient_cohort(
        lmu_cells, tmp_path / "spare", {"taken": (8, 10), "D": (2, 4), "A": (1, 0)}
    )
    if where == "s3":
        s3_endpoint = request.getfixturevalue("s3_endpoint")
        bucket, options = request.getfixturevalue("s3_bucket")
        source, store = f"s3://{bucket}/smears", f"s3://{bucket}/store"
        upload_folder(local, Store(source, options))
        extra = {"s3_endpoint_url": s3_endpoint}
    else:
        source, store, options, extra = str(local), str(tmp_path / "store"), {}, {}
    params = dict(source=source, store=store, model=str(tiny_model_file), **FAST, **extra)
    remote = Store(source, options) if where == "s3" else None

    first = run_score(task_runner, **params)
    assert [p["patient_id"] for p in first["patients"]] == ["A", "B", "C"]
    # Patient D arrives; nothing else changes.
    for image in sorted((spare / "D").iterdir()):
        _add(local, f"D/{image.name}", image.read_bytes(), remote)
    new = run_score(task_runner, new_only=True, **params)
    assert [p["patient_id"] for p in new["patients"]] == ["D"] and new["cells"] == 6
    assert new["run_id"] != first["run_id"]
    # One more image of A: A is scored again, as a new version; its first version stays.
    (image,) = sorted((spare / "A").iterdir())
    _add(local, f"A/{image.name}", image.read_bytes(), remote)
    changed = run_score(task_runner, new_only=True, **params)
    lost = Store(store, options).run(changed["run_id"]).quarantine_table
    assert [p["patient_id"] for p in changed["patients"]] == ["A"] and changed["cells"] == 7, (
        Store(store, options).read_table(lost).to_dict(orient="records")
    )
    location = Store(store, options)
    old_a, new_a = (
        location.read_table(location.run(r["run_id"]).scoring(r["score_id"]).patients_table)
        .set_index("patient_id")
        .loc["A"]
        for r in (first, changed)
    )
    assert (old_a.n_scored, new_a.n_scored) == (
        6,
        7,
    ) and old_a.patient_version != new_a.patient_version
    # Nothing new: nothing is written, and the result says so.
    fs, root = location.resolve()
    fs.invalidate_cache()
    objects = sorted(fs.find(root))
    nothing = run_score(task_runner, new_only=True, **params)
    assert nothing["nothing_new"] and nothing["run_id"] is None and nothing["patients"] == []
    fs.invalidate_cache()
    assert sorted(fs.find(root)) == objects


def test_new_only_from_the_cli_says_when_nothing_is_new(
    lmu_cells, tmp_path, dask_cluster, tiny_model_file
):
    source = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (3, 2)})
    args = [
        "score",
        str(source),
        "--store",
        str(tmp_path / "store"),
        "--model",
        str(tiny_model_file),
        "--min-cells",
        "3",
        "--no-explain",
        "--new-only",
        "--scheduler",
        dask_cluster.scheduler_address,
    ]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "5 cells scored with model file-" in first.output and "nothing new" not in first.output
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0, second.output
    assert (
        f"nothing new in {source}: model file-" in second.output
        and "cells scored" not in second.output
    )


def test_a_run_in_the_old_layout_is_refused_with_a_clear_message(tmp_path):
    """Before scorings were separate records, a run kept score.json and patients.parquet at its root."""
    old = tmp_path / "store" / "runs" / "cohort-0123456789ab-deadbeef"
    old.mkdir(parents=True)
    for name in ("ingest_plan.json", "score.json"):
        (old / name).write_text("{}")
    (old / "_SUCCESS").write_bytes(b"")
    run = Store(str(tmp_path / "store")).run(old.name)
    with pytest.raises(
        LegacyRunError, match="is in the old run-store layout .* does not convert old runs"
    ):
        find_scoring(run)
    refused = CliRunner().invoke(cli, ["report", old.name, "--store", str(tmp_path / "store")])
    assert refused.exit_code == 1 and "old run-store layout" in refused.output, refused.output
    shutil.rmtree(old)
    missing = CliRunner().invoke(cli, ["report", old.name, "--store", str(tmp_path / "store")])
    assert missing.exit_code == 1 and f"no run {old.name}" in missing.output


def test_scorings_are_listed_oldest_first_and_an_incomplete_one_is_never_the_latest(tmp_path):
    run = Store(str(tmp_path / "store")).run("r")
    for score_id, completed in (
        ("b", "2026-01-02T00:00:00+00:00"),
        ("a", "2026-01-03T00:00:00+00:00"),
        ("c", None),
    ):
        scoring = run.scoring(score_id)
        run.store.write_json(scoring.settings, {"model_version": score_id})
        if completed:
            run.store.write_json(scoring.success, {"completed_at": completed})
    listed = list_scorings(run)
    assert [(s["score_id"], s["complete"]) for s in listed] == [
        ("b", True),
        ("a", True),
        ("c", False),
    ]
    assert find_scoring(run).score_id == "a"
    assert np.array_equal([s["settings"]["model_version"] for s in listed], ["b", "a", "c"])
