"""The names of a run and its scorings (tasks/store_layout.py): views of a Store, no I/O."""

import pickle

from tasks.store import Store
from tasks.store_layout import FAILED, SCORE_RECORD, SHARDS, SUCCESS, RunPaths, ScoringPaths

OPTIONS = {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}


def test_run_paths_name_each_piece_of_an_ingest_run():
    store = Store("s3://lab/store", OPTIONS)
    run = RunPaths(store, "20260101T000000Z-ab12")
    root = "s3://lab/store/runs/20260101T000000Z-ab12"
    assert run.root == root
    assert run.cells_zarr == f"{root}/cells.zarr"
    assert run.cells_table == f"{root}/cells.parquet"
    assert run.quarantine_table == f"{root}/quarantine.parquet"
    assert run.plan == f"{root}/ingest_plan.json"
    assert run.report == f"{root}/ingest_report.json"
    assert run.success == f"{root}/_SUCCESS"
    assert run.failed == f"{root}/_FAILED"
    assert run.scores_root == f"{root}/scores"
    assert run.legacy_score_record == f"{root}/score.json"
    assert run.shard_marker("ingest", 3) == f"{root}/_shards/ingest/00003.json"
    assert (SUCCESS, FAILED, SCORE_RECORD, SHARDS) == (
        "_SUCCESS",
        "_FAILED",
        "score.json",
        "_shards",
    )


def test_scoring_paths_read_the_ingest_and_write_their_own_folder():
    store = Store("/data/store")
    scoring = store.run("r1").scoring("s1")
    root = "/data/store/runs/r1/scores/s1"
    assert scoring == ScoringPaths(RunPaths(store, "r1"), "s1") == store.scoring("r1", "s1")
    assert (scoring.run_id, scoring.score_id, scoring.root) == ("r1", "s1", root)
    # The ingest run's pieces, read only here.
    assert scoring.cells_zarr == "/data/store/runs/r1/cells.zarr"
    assert scoring.ingest_cells_table == "/data/store/runs/r1/cells.parquet"
    assert scoring.quarantine_table == "/data/store/runs/r1/quarantine.parquet"
    assert scoring.report == "/data/store/runs/r1/ingest_report.json"
    # The scoring's own.
    assert scoring.probabilities_zarr == f"{root}/probabilities.zarr"
    assert scoring.cells_table == f"{root}/cells.parquet"
    assert scoring.patients_table == f"{root}/patients.parquet"
    assert scoring.settings == f"{root}/score.json"
    assert scoring.success == f"{root}/_SUCCESS"
    assert scoring.failed == f"{root}/_FAILED"
    assert scoring.reports_root == f"{root}/reports"
    assert scoring.report_index == f"{root}/reports/index.html"
    assert scoring.score_shards == f"{root}/_shards/score"
    assert scoring.shard_marker("score", 12) == f"{root}/_shards/score/00012.json"


def test_the_paths_carry_their_store_with_its_options():
    store = Store("s3://lab/store/", OPTIONS)
    run = store.run("r1")
    scoring = run.scoring("s1")
    assert run.store is store and scoring.store is store
    assert scoring.store.options == OPTIONS
    assert isinstance(run.store.url, str), "records keep the URL string: paths.store.url"
    assert run.root == "s3://lab/store/runs/r1", "a trailing slash on the root is not doubled"
    below = store.sub("lab-a")
    assert below.run("r1").root == "s3://lab/store/lab-a/runs/r1"
    assert below.run("r1").store.options == OPTIONS
    assert pickle.loads(pickle.dumps(scoring)) == scoring
