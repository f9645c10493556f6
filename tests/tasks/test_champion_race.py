"""50 promote, rollback and prune operations at once, from threads and from processes, on local
disk and on the moto S3 server: the champion pointer must stay a complete model with a history
that only successful operations wrote, in order (docs/design.md, "Hardening")."""

from __future__ import annotations

import multiprocessing
import random
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import datetime

import pytest

from tasks.registry import read_champion, require_registered, set_champion
from tasks.store import Store
from tests.registry_fakes import fake_model
from tests.tasks.champion_race import run_operation

VERSIONS = [
    f"20261201T{hour:02d}{minute:02d}00Z-{hour:02d}{minute:02d}"
    for hour in (1, 2, 3)
    for minute in range(10)
]


def operations(store: Store) -> list[tuple[str, str, Store]]:
    """28 promotions, one per version but the two promoted first (each changes the champion),
    11 rollbacks and 11 prunes, shuffled."""
    chosen = [("promote", version, store) for version in VERSIONS[2:]]
    chosen += [("rollback", "", store)] * 11 + [("prune", "3", store)] * 11
    random.Random(7).shuffle(chosen)
    return chosen


@pytest.mark.parametrize("where", ["local", "s3"])
@pytest.mark.parametrize("workers", ["threads", "processes"])
def test_concurrent_promote_rollback_and_prune_keep_the_pointer_whole(
    where, workers, tmp_path, request
):
    if where == "s3":
        bucket, options = request.getfixturevalue("s3_bucket")
        store = Store(f"s3://{bucket}/store", options)
    else:
        store = Store(str(tmp_path / "store"))
    for version in VERSIONS:
        fake_model(store, version)
    set_champion(store, VERSIONS[0], reason="initial")
    set_champion(store, VERSIONS[1], reason="op initial-2")
    todo = operations(store)
    pool = (
        ThreadPoolExecutor(8)
        if workers == "threads"
        else ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn"))
    )
    with pool:
        outcomes = list(pool.map(run_operation, todo))

    done = {
        kind: sum(1 for k, _, outcome in outcomes if k == kind and outcome == "ok")
        for kind in ("promote", "rollback", "prune")
    }
    assert done["promote"] > 0 and done["prune"] > 0, outcomes
    pointer = read_champion(store)
    require_registered(store, pointer["version"])  # a complete model
    assert not pointer.get("pruning"), "every prune lifted its marks"
    # Every successful promotion of a new version pushed one entry, every rollback popped one:
    # a lost update (two writers from one read) breaks the count.
    assert len(pointer["history"]) == 1 + done["promote"] - done["rollback"], (pointer, outcomes)
    promoted = {
        f"op {version}"
        for kind, version, outcome in outcomes
        if kind == "promote" and outcome == "ok"
    }
    for entry in [*pointer["history"][1:], pointer]:
        assert entry["reason"] in promoted or entry["reason"].startswith(
            ("rolled back from", "op initial")
        ), entry
    times = [
        datetime.fromisoformat(entry["promoted_at"]) for entry in [*pointer["history"], pointer]
    ]
    assert times == sorted(times), "the history is in the order the operations took effect"
