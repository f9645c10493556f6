"""The profile's arithmetic: shares of a Dask statistical profile and times from a task stream."""

from __future__ import annotations

import pytest

from benchmarks.profile_score import profile_shares, task_times
from tests.conftest import PROJECT_ROOT


def _node(filename: str, name: str, count: int, *children: dict) -> dict:
    return {
        "description": {"filename": filename, "name": name},
        "count": count,
        "children": {str(i): child for i, child in enumerate(children)},
    }


def test_shares_count_callees_once_and_name_the_project_and_library_frames():
    ingest = f"{PROJECT_ROOT}/tasks/ingest.py"
    tree = {
        "count": 100,
        "children": {
            "a": _node(
                ".venv/lib/python3.11/site-packages/prefect/task_engine.py",
                "run_task_sync",
                100,
                _node(
                    ".venv/lib/python3.11/site-packages/tensorflow/python/eager/context.py",
                    "call_function",
                    70,
                ),
                _node(
                    "<dynamic-code>",
                    "ingest_shard",
                    20,
                    # Recursion: the function is on the stack twice and counts once.
                    _node(ingest, "_decode", 20, _node(ingest, "_decode", 15)),
                    _node(ingest, "<listcomp>", 5),
                ),
                _node("/usr/lib/python3.11/threading.py", "wait", 10),
            )
        },
    }
    shares = dict(profile_shares(tree))
    assert shares == {
        "Prefect task engine, task function included": 1.0,
        "TensorFlow graph call": 0.7,
        "task ingest_shard": 0.2,
        "tasks/ingest.py:_decode": 0.2,
    }
    assert list(dict(profile_shares(tree))) == sorted(shares, key=lambda name: -shares[name])


def test_task_times_sum_compute_per_kind_and_keep_each_workers_spans():
    stream = [
        {
            "key": "score_shard-0123456789abcdef0123456789abcdef",
            "worker": "tcp://a",
            "startstops": [
                {"action": "transfer", "start": 9.0, "stop": 10.0},
                {"action": "compute", "start": 10.0, "stop": 14.0},
            ],
        },
        {
            "key": ("p2pshuffle-86747b4b72560ac523f5dcdcc519da91", 1),
            "worker": "tcp://b",
            "startstops": [{"action": "compute", "start": 11.0, "stop": 11.5}],
        },
        {
            "key": "score_shard-fedcba9876543210fedcba9876543210",
            "worker": "tcp://b",
            "startstops": [{"action": "compute", "start": 12.0, "stop": 15.0}],
        },
    ]
    per_kind, spans = task_times(stream)
    assert per_kind == pytest.approx({"score_shard": 7.0, "p2pshuffle": 0.5})
    assert spans == {
        "tcp://a": [(1.0, 5.0, "score_shard")],
        "tcp://b": [(2.0, 2.5, "p2pshuffle"), (3.0, 6.0, "score_shard")],
    }
