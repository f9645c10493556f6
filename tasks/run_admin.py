"""Operating the run store: list its runs and scorings, show one, prune the old ones (``aml-smear runs``).

No Prefect, no TensorFlow: plain reads and removals through a :class:`tasks.store.Store`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pandas as pd

from tasks.registry import CARD_FILE
from tasks.runs import (
    LegacyRunError,
    find_scoring,
    list_scorings,
    recorded_completion,
    recorded_failure,
)
from tasks.store import Store, join
from tasks.store_layout import ScoringPaths

__all__ = [
    "RunEntry",
    "RunPrunePlan",
    "ScoringView",
    "list_runs",
    "plan_prune_runs",
    "prune_runs",
    "runs_root",
    "show_scoring",
]


def runs_root(store: Store) -> str:
    """The URL of the store's runs folder (:attr:`Store.runs`)."""
    return store.runs


@dataclass(frozen=True)
class RunEntry:
    """One ingest run: its state, cell count, scorings and when anything in it last completed.

    Attributes:
        failure: why the run failed (failed_at, reason), None unless it failed and was not completed since.
        last_activity: the newest completion (or failure) time of the run or its scorings; for a run
            that never completed, when its plan was written (None when even that is unknown).
        scorings: as :func:`tasks.runs.list_scorings` gives them (empty for a run of the old layout).
        legacy: the run is in the old layout (its scoring at the run root).
    """

    run_id: str
    complete: bool
    failure: dict | None
    cells: int | None
    scorings: tuple[dict, ...]
    last_activity: datetime | None
    legacy: bool


def _modified(store: Store, url: str) -> datetime | None:
    fs, path = store.resolve(url)
    try:
        stamp = fs.modified(path)
    except (FileNotFoundError, NotImplementedError, OSError):
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def _completed_at(store: Store, url: str) -> datetime | None:
    """When an existing ``_SUCCESS`` was written: its recorded time, else the file's modification time."""
    recorded = recorded_completion(store, url)
    return datetime.fromisoformat(recorded) if recorded else _modified(store, url)


def _entry(store: Store, run_id: str) -> RunEntry:
    run = store.run(run_id)
    try:
        scorings = tuple(list_scorings(run))
        legacy = False
    except LegacyRunError:
        scorings, legacy = (), True
    complete = store.exists(run.success)
    cells = (
        store.read_json(run.report)["counts"]["cells"]
        if complete and store.exists(run.report)
        else None
    )
    failure = None if complete else recorded_failure(run)
    times = [_completed_at(store, run.success)] if complete else []
    times += [datetime.fromisoformat(s["completed_at"]) for s in scorings if s["completed_at"]]
    times += [
        datetime.fromisoformat(record["failed_at"])
        for record in [failure] + [s["failure"] for s in scorings]
        if record
    ]
    times = [t for t in times if t is not None] or [_modified(store, run.plan)]
    return RunEntry(
        run_id=run_id,
        complete=complete,
        failure=failure,
        cells=cells,
        scorings=scorings,
        last_activity=max((t for t in times if t is not None), default=None),
        legacy=legacy,
    )


def list_runs(store: Store) -> list[RunEntry]:
    """Every run of the store, by run id."""
    return [_entry(store, run_id) for run_id in store.list_names(store.runs)]


@dataclass(frozen=True)
class ScoringView:
    """A complete scoring as ``aml-smear runs show`` prints it.

    Attributes:
        settings: its score.json (the settings, and where its probabilities were copied from).
        precisions: the precisions its shards were scored in, as their markers record them
            ("auto" resolves per worker); empty when it has no markers.
        quarantine: the run's quarantined inputs (source_uri, patient_id, reason).
        report: the cohort index page, None when the reports are missing.
    """

    scoring: ScoringPaths
    completed_at: str | None
    settings: dict
    precisions: tuple[str, ...]
    patients: pd.DataFrame
    quarantine: pd.DataFrame
    report: str | None


def show_scoring(store: Store, run_id: str, score_id: str | None = None) -> ScoringView:
    """The scoring ``score_id`` of the run ``run_id`` (by default its latest complete one), read back.

    Raises:
        ValueError: an id that is not one folder name (a path, ``..``).
        ScoringNotFoundError, IncompleteRunError: no such run or scoring, or it is not complete.
    """
    scoring = find_scoring(store.run(run_id), score_id)
    markers = [
        join(scoring.score_shards, name)
        for name in store.list_names(scoring.score_shards)
        if name.endswith(".json")
    ]
    precisions = sorted({store.read_json(marker)["precision"] for marker in markers})
    quarantine = store.read_table(scoring.quarantine_table)
    report = scoring.report_index if store.exists(scoring.report_index) else None
    return ScoringView(
        scoring=scoring,
        completed_at=recorded_completion(store, scoring.success),
        settings=store.read_json(scoring.settings),
        precisions=tuple(precisions),
        patients=store.read_table(scoring.patients_table),
        quarantine=quarantine.sort_values(["patient_id", "source_uri"]),
        report=report,
    )


@dataclass(frozen=True)
class RunPrunePlan:
    """What ``prune_runs`` removes, and why each other old run stays."""

    remove: tuple[str, ...]
    kept_old: dict[str, str]


def _runs_models_need(store: Store) -> dict[str, str]:
    """{run_id: model version} of the runs a registered model was trained on (its card's data.runs)."""
    needed: dict[str, str] = {}
    root = store.models
    for version in store.list_names(root):
        card_url = join(root, version, CARD_FILE)
        if not store.exists(card_url):
            continue
        for run_root in store.read_json(card_url).get("data", {}).get("runs", []):
            needed.setdefault(run_root.rstrip("/").rsplit("/", 1)[-1], version)
    return needed


def plan_prune_runs(
    store: Store, older_than_days: float, now: datetime | None = None
) -> RunPrunePlan:
    """The runs whose last activity is older than ``older_than_days``, except those a registered model needs.

    A run of unknown age is kept. Pruning a run removes its cells and every scoring of it; the
    ledger of scored patients stays, so ``--new-only`` does not score pruned patients again.
    """
    cutoff = (now or datetime.now(UTC)) - timedelta(days=older_than_days)
    needed = _runs_models_need(store)
    remove, kept = [], {}
    for entry in list_runs(store):
        if entry.last_activity is None or entry.last_activity >= cutoff:
            if entry.last_activity is None:
                kept[entry.run_id] = "age unknown"
            continue
        if entry.run_id in needed:
            kept[entry.run_id] = f"model {needed[entry.run_id]} was trained on it"
            continue
        remove.append(entry.run_id)
    return RunPrunePlan(remove=tuple(remove), kept_old=kept)


def prune_runs(
    store: Store, older_than_days: float, dry_run: bool = False, now: datetime | None = None
) -> RunPrunePlan:
    """Remove the runs :func:`plan_prune_runs` names (nothing with ``dry_run``); returns the plan.

    Each run's ``_SUCCESS`` and its scorings' go first, so a prune interrupted half-way leaves
    runs that readers refuse as incomplete, never a complete-looking run with files missing.
    """
    plan = plan_prune_runs(store, older_than_days, now)
    if dry_run:
        return plan
    for run_id in plan.remove:
        run = store.run(run_id)
        for scoring in store.list_names(run.scores_root):
            store.remove(run.scoring(scoring).success)
        store.remove(run.success)
        store.remove(run.root, recursive=True)
    return plan
