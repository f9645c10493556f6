"""The flow process is SIGKILLed mid-run: nothing half-written is taken for a result, a rerun completes it."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner
from prefect_dask import DaskTaskRunner

from app.cli import cli
from flows.parameters import ScoreOptions, nest_options
from flows.score import score_smears
from tasks.runs import IncompleteRunError, require_complete
from tasks.store import Store
from tests.reliability.conftest import (
    SCORE_PARAMS,
    SCORE_SHARDS,
    assert_same_tables,
    kill_group,
    read_tables,
    score_markers,
    start_score_process,
    wait_for,
)

pytestmark = pytest.mark.reliability


def _executing(dask_worker) -> int:
    return len(dask_worker.state.executing)


def test_killed_score_flow_is_refused_as_incomplete_and_a_rerun_completes_it(
    cohort, cluster, client, clean_run, tiny_model_file, tmp_path
):
    store = tmp_path / "store"
    params = dict(
        source=str(cohort),
        store=str(store),
        model=str(tiny_model_file),
        run_id="crash",
        **SCORE_PARAMS,
    )
    log = tmp_path / "flow.log"
    process = start_score_process(cluster.scheduler_address, log, **params)
    try:
        wait_for(
            lambda: len(score_markers(store, "crash")) >= 3 or process.poll() is not None,
            240,
            "some probability chunks to be written",
        )
    finally:
        kill_group(process)
    assert process.returncode == -9, (
        f"the flow ended before it was killed:\n{log.read_text()[-3000:]}"
    )
    # Tasks already running on the workers finish (their client is gone); then nothing moves.
    wait_for(
        lambda: not any(client.run(_executing).values()),
        60,
        "the workers to finish their running tasks",
    )
    before = score_markers(store, "crash")
    run = store / "runs" / "crash"
    ingest_before = {
        p.name: p.stat().st_mtime_ns for p in (run / "_shards" / "ingest").glob("*.json")
    }
    assert 0 < len(before) < SCORE_SHARDS, "killed after some chunks, before the last"
    (scoring_dir,) = (run / "scores").iterdir()
    assert (
        not (scoring_dir / "_SUCCESS").exists() and not (scoring_dir / "patients.parquet").exists()
    )
    assert not (scoring_dir / "cells.parquet").exists()
    # Scoring starts as shards are decoded, so the ingest's cell table may not be written yet; it
    # never holds probabilities (they are the scoring's).
    cells_table = run / "cells.parquet"
    assert not cells_table.exists() or "probability" not in pd.read_parquet(cells_table).columns

    # Readers refuse it: the library's check, and aml-smear's own reader of runs.
    scoring = Store(str(store)).run("crash").scoring(scoring_dir.name)
    with pytest.raises(
        IncompleteRunError,
        match="scoring .* of run crash .* is incomplete .*rerun it with the same",
    ):
        require_complete(scoring)
    refused = CliRunner().invoke(cli, ["report", "crash", "--store", str(store)])
    assert refused.exit_code == 1 and "has only incomplete scorings" in refused.output, (
        refused.output
    )
    refused = CliRunner().invoke(
        cli, ["report", "crash", "--store", str(store), "--score", scoring_dir.name]
    )
    assert refused.exit_code == 1 and "is incomplete (no _SUCCESS)" in refused.output, (
        refused.output
    )

    result = score_smears.with_options(
        task_runner=DaskTaskRunner(address=cluster.scheduler_address)
    )(**nest_options(params, ScoreOptions))
    assert not result["already_complete"]
    after = score_markers(store, "crash")
    assert len(after) == SCORE_SHARDS
    assert {name: after[name] for name in before} == before, "finished chunks are not scored again"
    ingest_after = {
        p.name: p.stat().st_mtime_ns for p in (run / "_shards" / "ingest").glob("*.json")
    }
    assert len(ingest_after) == SCORE_SHARDS
    assert {name: ingest_after[name] for name in ingest_before} == ingest_before, (
        "no decoded shard is decoded again"
    )
    assert_same_tables(read_tables(Store(str(store)), "crash"), clean_run[2])
    assert result["score_id"] == scoring_dir.name
    assert (
        json.loads((scoring_dir / "score.json").read_text())["model_version"]
        == result["model_version"]
    )


def test_killed_retrain_keeps_the_champion_and_racing_retrains_promote_one_complete_model(
    training_cohort, cohort, cluster, s3_bucket, s3_endpoint, tiny_model_file, tmp_path
):
    """A retrain killed while registering its model leaves champion.json on the old, complete model.

    Its half-registered version is refused by name. Then two retrains race into the same store:
    both finish, and champion.json names one complete, loadable model.
    """
    import threading

    import s3fs

    from aml_model.io import load_model
    from tasks.registry import ModelNotFoundError, register_model, resolve_model, set_champion
    from tests.reliability.conftest import FAKE_SECRETS, result_line, start_retrain_process
    from tests.reliability.s3proxy import FaultProxy

    bucket, options = s3_bucket
    store = f"s3://{bucket}/store"
    registry = Store(store, options)
    old = register_model(str(tiny_model_file), {"config": {"model": {"image_size": 32}}}, registry)
    set_champion(registry, old.version)
    fs = s3fs.S3FileSystem(**options)

    # The model card is the last file of a registration: hold its upload and kill the flow meanwhile.
    release = threading.Event()
    with FaultProxy(s3_endpoint) as proxy:
        proxy.fault = lambda method, path: (
            ("hold", release) if method == "PUT" and "model_card.json" in path else None
        )
        log = tmp_path / "killed-retrain.log"
        process = start_retrain_process(
            cluster.scheduler_address,
            log,
            sources=[str(training_cohort)],
            store=store,
            s3_endpoint_url=proxy.url,
        )
        try:
            wait_for(
                lambda: proxy.held.is_set() or process.poll() is not None,
                400,
                "the model card upload",
            )
        finally:
            kill_group(process)
            release.set()
    assert proxy.held.is_set(), log.read_text()[-4000:]
    fs.invalidate_cache()
    versions = [
        p.rsplit("/", 1)[-1] for p in fs.ls(f"{bucket}/store/models", detail=False) if fs.isdir(p)
    ]
    (partial,) = [v for v in versions if v != old.version]
    assert fs.exists(f"{bucket}/store/models/{partial}/model.keras")
    assert not fs.exists(f"{bucket}/store/models/{partial}/model_card.json")
    assert resolve_model("champion", registry) == old, "the champion did not move"
    with pytest.raises(ModelNotFoundError, match=f"{partial} .* is not completely registered"):
        resolve_model(partial, registry)
    refused = CliRunner().invoke(
        cli,
        [
            "score",
            str(cohort),
            "--store",
            store,
            "--model",
            partial,
            "--s3-endpoint-url",
            s3_endpoint,
            "--scheduler",
            cluster.scheduler_address,
        ],
    )
    assert refused.exit_code == 1 and "is not completely registered" in refused.output, (
        refused.output
    )

    # Two retrains at once (a rerun and a second nightly job) race for promotion.
    logs = [tmp_path / f"race-{i}.log" for i in range(2)]
    racers = [
        start_retrain_process(
            cluster.scheduler_address,
            log,
            sources=[str(training_cohort)],
            store=store,
            s3_endpoint_url=s3_endpoint,
        )
        for log in logs
    ]
    try:
        wait_for(lambda: all(p.poll() is not None for p in racers), 400, "both retrains")
    finally:
        for process in racers:
            kill_group(process)
    assert [p.returncode for p in racers] == [0, 0], "\n".join(
        log.read_text()[-3000:] for log in logs
    )
    results = [result_line(log) for log in logs]
    champion = resolve_model("champion", registry)
    assert champion.version in {old.version} | {r["version"] for r in results if r["promoted"]}
    folder = f"{bucket}/store/models/{champion.version}"
    card = json.loads(fs.cat_file(f"{folder}/model_card.json"))
    assert card["version"] == champion.version
    local = registry.local_copy(champion.url, f"check-{champion.version}.keras")
    assert load_model(local, compile=False).input_shape == (None, 32, 32, 3)
    for result in results:  # both registrations are complete
        assert fs.exists(f"{bucket}/store/models/{result['version']}/model_card.json")
    # No credential of the flow processes reached a model card.
    for path in fs.find(f"{bucket}/store/models"):
        data = fs.cat_file(path)
        assert not any(secret.encode() in data for secret in FAKE_SECRETS.values()), path


def test_a_killed_rescoring_leaves_the_finished_scoring_byte_identical(
    clean_run, cohort, cluster, client, tiny_model_file, tmp_path
):
    """A rerun with other settings is killed mid-scoring: the finished scoring and the cells are untouched.

    Another precision, so that it runs the model: other call settings alone copy the finished
    scoring's probabilities (tasks.predict.reuse_probabilities) and score no shard."""
    import shutil

    from tasks.runs import find_scoring, list_scorings

    clean_store, run_id, tables = clean_run
    store = tmp_path / "store"
    shutil.copytree(clean_store, store)
    run = store / "runs" / run_id

    def files() -> dict[str, bytes]:
        return {
            str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()
        }

    before = files()
    params = dict(
        source=str(cohort),
        store=str(store),
        model=str(tiny_model_file),
        run_id=run_id,
        **{**SCORE_PARAMS, "precision": "float32"},
    )
    log = tmp_path / "flow.log"
    process = start_score_process(cluster.scheduler_address, log, **params)
    try:
        wait_for(
            lambda: (
                len(list(run.glob("scores/*/_shards/score/*.json"))) >= SCORE_SHARDS + 2
                or process.poll() is not None
            ),
            240,
            "some chunks of the new scoring",
        )
    finally:
        kill_group(process)
    assert process.returncode == -9, (
        f"the flow ended before it was killed:\n{log.read_text()[-3000:]}"
    )
    wait_for(
        lambda: not any(client.run(_executing).values()),
        60,
        "the workers to finish their running tasks",
    )

    after = files()
    assert {name: after.get(name) for name in before} == before, (
        "a file of the finished run changed or vanished"
    )
    scorings = list_scorings(Store(str(store)).run(run_id))
    assert [s["complete"] for s in scorings] == [True, False]
    assert scorings[1]["settings"]["precision"] == "float32"
    # Readers still find the finished scoring, with its tables as they were.
    assert find_scoring(Store(str(store)).run(run_id)).score_id == scorings[0]["score_id"]
    assert_same_tables(read_tables(Store(str(store)), run_id), tables)


def test_score_flow_killed_during_aggregation_resumes_without_scoring_a_shard_again(
    cohort, cluster, client, clean_run, s3_bucket, s3_endpoint, tiny_model_file, tmp_path
):
    """The flow is SIGKILLed on moto S3 while the scored cell table's parts are written, after
    every shard was scored; a rerun writes the tables and _SUCCESS and decodes and scores nothing."""
    import threading

    import s3fs

    from tests.reliability.s3proxy import FaultProxy

    bucket, options = s3_bucket
    store = f"s3://{bucket}/store"
    params = dict(
        source=str(cohort), store=store, model=str(tiny_model_file), run_id="agg", **SCORE_PARAMS
    )
    release = threading.Event()

    def hold_the_scored_table(method: str, path: str):
        writes_part = method == "PUT" and "/scores/" in path and "/cells.parquet/part-" in path
        return ("hold", release) if writes_part else None

    with FaultProxy(s3_endpoint) as proxy:
        proxy.fault = hold_the_scored_table
        log = tmp_path / "killed.log"
        process = start_score_process(
            cluster.scheduler_address, log, s3_endpoint_url=proxy.url, **params
        )
        try:
            wait_for(
                lambda: proxy.held.is_set() or process.poll() is not None,
                240,
                "the first part of the scored cell table",
            )
        finally:
            kill_group(process)
            release.set()
    assert proxy.held.is_set(), log.read_text()[-4000:]
    # The aggregation left on the workers fails once the proxy is gone; then nothing moves.
    wait_for(
        lambda: not any(client.run(_executing).values()),
        120,
        "the workers to finish their running tasks",
    )
    fs = s3fs.S3FileSystem(**options)
    fs.invalidate_cache()
    (scoring,) = fs.ls(f"{bucket}/store/runs/agg/scores", detail=False)
    assert len(fs.glob(f"{scoring}/_shards/score/*.json")) == SCORE_SHARDS, (
        "killed after the last shard was scored"
    )
    assert fs.exists(f"{bucket}/store/runs/agg/_SUCCESS"), "the ingest run is complete"
    assert not fs.exists(f"{scoring}/_SUCCESS") and not fs.exists(f"{scoring}/patients.parquet")

    requests: list[tuple[str, str]] = []
    with FaultProxy(s3_endpoint) as proxy:
        proxy.fault = lambda method, path: requests.append((method, path))
        result = score_smears.with_options(
            task_runner=DaskTaskRunner(address=cluster.scheduler_address)
        )(s3_endpoint_url=proxy.url, **nest_options(params, ScoreOptions))
    written = [path for method, path in requests if method == "PUT"]
    assert not [path for path in written if "/_shards/" in path or "/c/" in path], (
        "no shard marker and no Zarr chunk written again: nothing decoded or scored twice"
    )
    assert any("/scores/" in path and "/cells.parquet/part-" in path for path in written)
    assert not result["already_complete"]
    fs.invalidate_cache()
    assert fs.exists(f"{scoring}/_SUCCESS")
    assert_same_tables(read_tables(Store(store, options), "agg"), clean_run[2])
