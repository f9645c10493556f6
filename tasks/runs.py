"""The state of runs and scorings in the store: absent, incomplete or complete; which scoring to read."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from aml_model.errors import AmlSmearError
from tasks.store import Store
from tasks.store_layout import RunPaths, ScoringPaths

__all__ = [
    "ID_PATTERN",
    "REUSED_FROM",
    "IncompleteRunError",
    "LegacyRunError",
    "RunConflictError",
    "RunState",
    "ScoringNotFoundError",
    "check_id",
    "derive_score_id",
    "find_scoring",
    "list_scorings",
    "mark_complete",
    "open_scoring",
    "recorded_completion",
    "recorded_failure",
    "recording_failure",
    "require_complete",
    "reusable_probabilities",
    "run_state",
]

#: A run or score id: one folder name under runs/ (no path separator, never "." or "..").
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

#: The score.json key naming the scoring whose probabilities a scoring copied; not a setting (not in its id).
REUSED_FROM = "reused_probabilities_from"

# What a scoring's probabilities depend on besides the run's cells (score_shard's markers check the same).
_PROBABILITY_SETTINGS = ("model_version", "precision")


class IncompleteRunError(AmlSmearError, RuntimeError):
    """A run or scoring has no ``_SUCCESS``: its tables must not be read as final."""


class RunConflictError(AmlSmearError, ValueError):
    """A run id already holds a run of different inputs, or a score id a scoring of other settings."""


class ScoringNotFoundError(AmlSmearError, FileNotFoundError):
    """No complete scoring where one was asked for."""


class LegacyRunError(AmlSmearError, ValueError):
    """A run written in the old layout, with its scoring at the run root."""


@dataclass(frozen=True)
class RunState:
    plan: dict | None
    complete: bool


def run_state(paths: RunPaths) -> RunState:
    store = paths.store
    plan = store.read_json(paths.plan) if store.exists(paths.plan) else None
    return RunState(plan=plan, complete=store.exists(paths.success))


def mark_complete(paths: RunPaths | ScoringPaths) -> None:
    """Write ``_SUCCESS``, last: it holds the completion time, which orders a run's scorings."""
    paths.store.write_json(paths.success, {"completed_at": datetime.now(UTC).isoformat()})


@contextlib.contextmanager
def recording_failure(records: Sequence[RunPaths | ScoringPaths]) -> Iterator[None]:
    """Around the work that writes ``records``: when it raises, each one it left incomplete records why.

    Without the record a failed run looks like one still running, and ``aml-smear runs list``
    could not say why it stopped. A record of an earlier attempt is removed first, so that a rerun
    resuming the work is not listed as failed while it runs. A record is written only where the
    work wrote something: a failure before that leaves nothing in the store. A process that is
    killed writes nothing: its run stays incomplete.
    """
    for paths in records:
        paths.store.remove(paths.failed)
    try:
        yield
    except Exception as exc:
        reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        failure = {"failed_at": datetime.now(UTC).isoformat(), "reason": reason}
        for paths in records:
            # A store that refused the work may refuse the record too: the work's own error is what to raise.
            with contextlib.suppress(OSError):
                if paths.store.exists(paths.root) and not paths.store.exists(paths.success):
                    paths.store.write_json(paths.failed, failure)
        raise


def recorded_failure(paths: RunPaths | ScoringPaths) -> dict | None:
    """The failure a run or scoring records (failed_at, reason); None when it has none or completed since."""
    if paths.store.exists(paths.success) or not paths.store.exists(paths.failed):
        return None
    return paths.store.read_json(paths.failed)


def require_complete(paths: RunPaths | ScoringPaths) -> None:
    """Raise unless the run (or scoring) finished: readers must not take a partial one for a result."""
    if not paths.store.exists(paths.success):
        what = (
            f"scoring {paths.score_id} of run {paths.run_id}"
            if isinstance(paths, ScoringPaths)
            else f"run {paths.run_id}"
        )
        failure = recorded_failure(paths)
        why = (
            f"it failed ({failure['reason']})"
            if failure
            else "it was interrupted or is still running"
        )
        message = (
            f"{what} in {paths.store.url} is incomplete (no _SUCCESS): {why}; "
            f"rerun it with the same settings to complete it"
        )
        raise IncompleteRunError(message)


def recorded_completion(store: Store, success_url: str) -> str | None:
    """The completion time (ISO) a ``_SUCCESS`` of ``store`` records; None when it records none.

    A _SUCCESS written by hand (or by an older writer) may be empty: complete, time unknown.
    """
    data = store.read_bytes(success_url)
    return json.loads(data).get("completed_at") if data.strip() else None


def _require_current_layout(run: RunPaths) -> None:
    if run.store.exists(run.legacy_score_record) and not run.store.exists(run.scores_root):
        message = (
            f"run {run.run_id} in {run.store.url} is in the old run-store layout (its scoring at the run root, "
            f"{run.legacy_score_record}); this version reads scorings from runs/<run>/scores/<score>/ "
            f"and does not convert old runs: score the source again (its cells are decoded once more "
            f"into a new run), or read the old tables directly"
        )
        raise LegacyRunError(message)


def list_scorings(run: RunPaths) -> list[dict]:
    """Every scoring of ``run``, oldest complete first, incomplete ones last.

    Returns:
        One dict per scoring: score_id, complete, completed_at (ISO time or None), failure
        (:func:`recorded_failure`) and the settings of its score.json (None if it has none yet).
    """
    _require_current_layout(run)
    store = run.store
    if not store.exists(run.scores_root):
        return []
    scorings = []
    for score_id in store.list_names(run.scores_root):
        paths = run.scoring(score_id)
        done = store.exists(paths.success)
        settings = store.read_json(paths.settings) if store.exists(paths.settings) else None
        completed_at = recorded_completion(store, paths.success) if done else None
        scorings.append(
            {
                "score_id": score_id,
                "complete": done,
                "completed_at": completed_at,
                "failure": None if done else recorded_failure(paths),
                "settings": settings,
            }
        )
    return sorted(
        scorings, key=lambda s: (not s["complete"], s["completed_at"] or "", s["score_id"])
    )


def find_scoring(run: RunPaths, score_id: str | None = None) -> ScoringPaths:
    """The named scoring of ``run``, or its latest complete one; raises if there is none to read.

    Raises:
        ValueError: a run or score id that is not one folder name (``../x``): nothing is read.
        ScoringNotFoundError: no such run, scoring, or complete scoring.
    """
    check_id(run.run_id, "run id")
    if score_id is not None:
        check_id(score_id, "score id")
    if not run.store.exists(run.root):
        message = f"no run {run.run_id} in {run.store.url} ({run.root} does not exist)"
        raise ScoringNotFoundError(message)
    scorings = list_scorings(run)
    if score_id is not None:
        if score_id not in {s["score_id"] for s in scorings}:
            message = (
                f"run {run.run_id} has no scoring {score_id}; its scorings: "
                f"{', '.join(s['score_id'] for s in scorings) or 'none'}"
            )
            raise ScoringNotFoundError(message)
        paths = run.scoring(score_id)
        require_complete(paths)
        return paths
    complete = [s for s in scorings if s["complete"]]
    if not complete:
        state = (
            "only incomplete scorings (interrupted or still running)" if scorings else "no scoring"
        )
        message = f"run {run.run_id} in {run.store.url} has {state}: score it to read its calls"
        raise ScoringNotFoundError(message)
    return run.scoring(complete[-1]["score_id"])


def check_id(value: str, what: str = "run id") -> str:
    """``value`` when it names one run (or scoring) folder; a path (``a/b``, ``..``) is refused.

    Raises:
        ValueError: saying what an id may hold.
    """
    if not re.fullmatch(ID_PATTERN, value):
        message = (
            f"{what} {value!r} is not one: letters, digits, '.', '_' and '-', starting with a letter or "
            f"digit, no path (`aml-smear runs list` shows the ids)"
        )
        raise ValueError(message)
    return value


def reusable_probabilities(scoring: ScoringPaths, settings: dict) -> ScoringPaths | None:
    """The latest complete other scoring of the same run whose probabilities ``settings`` would compute again.

    The probabilities depend on the cells (the run), the model and the precision only: a scoring
    that differs in the call settings, the site or Grad-CAM can copy them instead of running the
    model. None when there is no such scoring.
    """
    wanted = {key: settings[key] for key in _PROBABILITY_SETTINGS}
    for entry in reversed(list_scorings(scoring.ingest)):
        recorded = entry["settings"] or {}
        if (
            entry["complete"]
            and entry["score_id"] != scoring.score_id
            and all(recorded.get(key) == value for key, value in wanted.items())
        ):
            return scoring.ingest.scoring(entry["score_id"])
    return None


def derive_score_id(settings: dict) -> str:
    """``<model_version>-<hash of the other settings>``: the same model and settings, the same scoring."""
    others = {k: v for k, v in settings.items() if k != "model_version"}
    digest = hashlib.sha256(json.dumps(others, sort_keys=True).encode()).hexdigest()
    return f"{settings['model_version']}-{digest[:8]}"


def open_scoring(scoring: ScoringPaths, settings: dict, reused_from: str | None = None) -> bool:
    """Record a new scoring's settings, or check them against those it was started with.

    A finished scoring is never rewritten: a score id that holds other settings is refused
    before anything is written. ``reused_from`` (the scoring whose probabilities this one copies)
    is recorded beside the settings as :data:`REUSED_FROM`; an unfinished scoring resumed with
    another source of probabilities records the new one. Returns whether the scoring is already
    complete.
    """
    _require_current_layout(scoring.ingest)
    store = scoring.store
    settings = json.loads(json.dumps(settings))
    record = settings | ({REUSED_FROM: reused_from} if reused_from else {})
    if store.exists(scoring.settings):
        recorded = store.read_json(scoring.settings)
        recorded_settings = {key: value for key, value in recorded.items() if key != REUSED_FROM}
        if recorded_settings != settings:
            changed = sorted(
                k
                for k in recorded_settings.keys() | settings.keys()
                if recorded_settings.get(k) != settings.get(k)
            )
            message = (
                f"scoring {scoring.score_id} of run {scoring.run_id} in {scoring.store.url} was made with other "
                f"settings ({', '.join(changed)} differ); a scoring is never rewritten: leave the score id "
                f"out (other settings get their own) or name a new one"
            )
            raise RunConflictError(message)
        if store.exists(scoring.success):
            return True
        if recorded == record:
            return False
    store.write_json(scoring.settings, record)
    return False
