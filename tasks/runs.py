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
from tasks import storage

__all__ = ["ID_PATTERN", "REUSED_FROM", "IncompleteRunError", "LegacyRunError", "RunConflictError", "RunState",
           "ScoringNotFoundError", "check_id", "derive_score_id", "find_scoring", "list_scorings", "mark_complete",
           "open_scoring", "recorded_completion", "recorded_failure", "recording_failure", "require_complete",
           "reusable_probabilities", "run_state"]

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


def run_state(paths: storage.RunPaths, storage_options: dict | None = None) -> RunState:
    plan = storage.read_json(paths.plan, storage_options) if storage.exists(paths.plan, storage_options) else None
    return RunState(plan=plan, complete=storage.exists(paths.success, storage_options))


def mark_complete(paths: storage.RunPaths | storage.ScoringPaths, storage_options: dict | None = None) -> None:
    """Write ``_SUCCESS``, last: it holds the completion time, which orders a run's scorings."""
    storage.write_json(paths.success, {"completed_at": datetime.now(UTC).isoformat()}, storage_options)


@contextlib.contextmanager
def recording_failure(records: Sequence[storage.RunPaths | storage.ScoringPaths],
                      storage_options: dict | None = None) -> Iterator[None]:
    """Around the work that writes ``records``: when it raises, each one it left incomplete records why.

    Without the record a failed run looks like one still running, and ``aml-smear runs list``
    could not say why it stopped. A record of an earlier attempt is removed first, so that a rerun
    resuming the work is not listed as failed while it runs. A record is written only where the
    work wrote something: a failure before that leaves nothing in the store. A process that is
    killed writes nothing: its run stays incomplete.
    """
    for paths in records:
        storage.remove(paths.failed, storage_options)
    try:
        yield
    except Exception as exc:
        reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        failure = {"failed_at": datetime.now(UTC).isoformat(), "reason": reason}
        for paths in records:
            # A store that refused the work may refuse the record too: the work's own error is what to raise.
            with contextlib.suppress(OSError):
                if storage.exists(paths.root, storage_options) and not storage.exists(paths.success, storage_options):
                    storage.write_json(paths.failed, failure, storage_options)
        raise


def recorded_failure(paths: storage.RunPaths | storage.ScoringPaths,
                     storage_options: dict | None = None) -> dict | None:
    """The failure a run or scoring records (failed_at, reason); None when it has none or completed since."""
    if storage.exists(paths.success, storage_options) or not storage.exists(paths.failed, storage_options):
        return None
    return storage.read_json(paths.failed, storage_options)


def require_complete(paths: storage.RunPaths | storage.ScoringPaths, storage_options: dict | None = None) -> None:
    """Raise unless the run (or scoring) finished: readers must not take a partial one for a result."""
    if not storage.exists(paths.success, storage_options):
        what = (f"scoring {paths.score_id} of run {paths.run_id}" if isinstance(paths, storage.ScoringPaths)
                else f"run {paths.run_id}")
        failure = recorded_failure(paths, storage_options)
        why = (f"it failed ({failure['reason']})" if failure
               else "it was interrupted or is still running")
        message = (f"{what} in {paths.store} is incomplete (no _SUCCESS): {why}; "
                   f"rerun it with the same settings to complete it")
        raise IncompleteRunError(message)


def recorded_completion(success_url: str, storage_options: dict | None = None) -> str | None:
    """The completion time (ISO) a ``_SUCCESS`` records; None when it records none.

    A _SUCCESS written by hand (or by an older writer) may be empty: complete, time unknown.
    """
    data = storage.read_bytes(success_url, storage_options)
    return json.loads(data).get("completed_at") if data.strip() else None


def _require_current_layout(run: storage.RunPaths, storage_options: dict | None) -> None:
    if storage.exists(run.legacy_score_record, storage_options) and not storage.exists(run.scores_root,
                                                                                        storage_options):
        message = (f"run {run.run_id} in {run.store} is in the old run-store layout (its scoring at the run root, "
                   f"{run.legacy_score_record}); this version reads scorings from runs/<run>/scores/<score>/ "
                   f"and does not convert old runs: score the source again (its cells are decoded once more "
                   f"into a new run), or read the old tables directly")
        raise LegacyRunError(message)


def list_scorings(run: storage.RunPaths, storage_options: dict | None = None) -> list[dict]:
    """Every scoring of ``run``, oldest complete first, incomplete ones last.

    Returns:
        One dict per scoring: score_id, complete, completed_at (ISO time or None), failure
        (:func:`recorded_failure`) and the settings of its score.json (None if it has none yet).
    """
    _require_current_layout(run, storage_options)
    if not storage.exists(run.scores_root, storage_options):
        return []
    scorings = []
    for score_id in storage.list_names(run.scores_root, storage_options):
        paths = run.scoring(score_id)
        done = storage.exists(paths.success, storage_options)
        settings = (storage.read_json(paths.settings, storage_options)
                    if storage.exists(paths.settings, storage_options) else None)
        completed_at = recorded_completion(paths.success, storage_options) if done else None
        scorings.append({"score_id": score_id, "complete": done, "completed_at": completed_at,
                         "failure": None if done else recorded_failure(paths, storage_options), "settings": settings})
    return sorted(scorings, key=lambda s: (not s["complete"], s["completed_at"] or "", s["score_id"]))


def find_scoring(run: storage.RunPaths, score_id: str | None = None,
                 storage_options: dict | None = None) -> storage.ScoringPaths:
    """The named scoring of ``run``, or its latest complete one; raises if there is none to read.

    Raises:
        ValueError: a run or score id that is not one folder name (``../x``): nothing is read.
        ScoringNotFoundError: no such run, scoring, or complete scoring.
    """
    check_id(run.run_id, "run id")
    if score_id is not None:
        check_id(score_id, "score id")
    if not storage.exists(run.root, storage_options):
        message = f"no run {run.run_id} in {run.store} ({run.root} does not exist)"
        raise ScoringNotFoundError(message)
    scorings = list_scorings(run, storage_options)
    if score_id is not None:
        if score_id not in {s["score_id"] for s in scorings}:
            message = (f"run {run.run_id} has no scoring {score_id}; its scorings: "
                       f"{', '.join(s['score_id'] for s in scorings) or 'none'}")
            raise ScoringNotFoundError(message)
        paths = run.scoring(score_id)
        require_complete(paths, storage_options)
        return paths
    complete = [s for s in scorings if s["complete"]]
    if not complete:
        state = "only incomplete scorings (interrupted or still running)" if scorings else "no scoring"
        message = f"run {run.run_id} in {run.store} has {state}: score it to read its calls"
        raise ScoringNotFoundError(message)
    return run.scoring(complete[-1]["score_id"])


def check_id(value: str, what: str = "run id") -> str:
    """``value`` when it names one run (or scoring) folder; a path (``a/b``, ``..``) is refused.

    Raises:
        ValueError: saying what an id may hold.
    """
    if not re.fullmatch(ID_PATTERN, value):
        message = (f"{what} {value!r} is not one: letters, digits, '.', '_' and '-', starting with a letter or "
                   f"digit, no path (`aml-smear runs list` shows the ids)")
        raise ValueError(message)
    return value


def reusable_probabilities(scoring: storage.ScoringPaths, settings: dict,
                           storage_options: dict | None = None) -> storage.ScoringPaths | None:
    """The latest complete other scoring of the same run whose probabilities ``settings`` would compute again.

    The probabilities depend on the cells (the run), the model and the precision only: a scoring
    that differs in the call settings, the site or Grad-CAM can copy them instead of running the
    model. None when there is no such scoring.
    """
    wanted = {key: settings[key] for key in _PROBABILITY_SETTINGS}
    for entry in reversed(list_scorings(scoring.ingest, storage_options)):
        recorded = entry["settings"] or {}
        if (entry["complete"] and entry["score_id"] != scoring.score_id
                and all(recorded.get(key) == value for key, value in wanted.items())):
            return scoring.ingest.scoring(entry["score_id"])
    return None


def derive_score_id(settings: dict) -> str:
    """``<model_version>-<hash of the other settings>``: the same model and settings, the same scoring."""
    others = {k: v for k, v in settings.items() if k != "model_version"}
    digest = hashlib.sha256(json.dumps(others, sort_keys=True).encode()).hexdigest()
    return f"{settings['model_version']}-{digest[:8]}"


def open_scoring(scoring: storage.ScoringPaths, settings: dict, storage_options: dict | None = None,
                 reused_from: str | None = None) -> bool:
    """Record a new scoring's settings, or check them against those it was started with.

    A finished scoring is never rewritten: a score id that holds other settings is refused
    before anything is written. ``reused_from`` (the scoring whose probabilities this one copies)
    is recorded beside the settings as :data:`REUSED_FROM`; an unfinished scoring resumed with
    another source of probabilities records the new one. Returns whether the scoring is already
    complete.
    """
    _require_current_layout(scoring.ingest, storage_options)
    settings = json.loads(json.dumps(settings))
    record = settings | ({REUSED_FROM: reused_from} if reused_from else {})
    if storage.exists(scoring.settings, storage_options):
        recorded = storage.read_json(scoring.settings, storage_options)
        recorded_settings = {key: value for key, value in recorded.items() if key != REUSED_FROM}
        if recorded_settings != settings:
            changed = sorted(k for k in recorded_settings.keys() | settings.keys()
                             if recorded_settings.get(k) != settings.get(k))
            message = (f"scoring {scoring.score_id} of run {scoring.run_id} in {scoring.store} was made with other "
                       f"settings ({', '.join(changed)} differ); a scoring is never rewritten: leave the score id "
                       f"out (other settings get their own) or name a new one")
            raise RunConflictError(message)
        if storage.exists(scoring.success, storage_options):
            return True
        if recorded == record:
            return False
    storage.write_json(scoring.settings, record, storage_options)
    return False
