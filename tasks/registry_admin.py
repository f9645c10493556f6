"""Operating the model registry: list, inspect, compare and prune versions (``aml-smear models``).

Plain functions, no Prefect. Promotion and rollback are :func:`tasks.registry.set_champion` and
:func:`tasks.registry.rollback_champion`: the one atomic pointer write the flows use.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from tasks.registry import (
    CARD_FILE,
    MODEL_FILE,
    ModelNotFoundError,
    RegistryError,
    champion_pointer,
    models_root,
    pruning_marks,
    read_champion,
    require_registered,
    update_champion,
)
from tasks.store import Store, join
from tasks.store_layout import SCORE_RECORD, SHARDS

__all__ = [
    "METRICS",
    "ModelEntry",
    "PrunePlan",
    "card_facts",
    "compare_cards",
    "list_models",
    "model_references",
    "model_status",
    "plan_prune",
    "prune_models",
    "resolve_version",
]

# The test metrics of a card, in the order they are shown.
METRICS = ("roc_auc", "accuracy", "sensitivity", "specificity", "precision", "f1")
# An incomplete version younger than this may be a registration in progress: prune leaves it.
INCOMPLETE_GRACE = timedelta(days=1)
# Folders under runs/ that never hold a scoring record: walking them would list every chunk.
_NOT_SCORINGS = (SHARDS,)


@dataclass(frozen=True)
class ModelEntry:
    """One folder of models/.

    Attributes:
        version: the folder's name.
        card: its model card, or None when the registration is incomplete or the card unreadable.
        problem: why the version cannot be used (None when it is complete).
        status: "champion", "previous champion" (what ``rollback`` returns to), "candidate" or "incomplete".
    """

    version: str
    card: dict | None
    problem: str | None
    status: str

    @property
    def complete(self) -> bool:
        return self.problem is None

    @property
    def registered_at(self) -> str:
        """The card's registration time; for an incomplete version, the time its name records ("" if none)."""
        if self.card and self.card.get("registered_at"):
            return str(self.card["registered_at"])
        stamp = _version_time(self.version)
        return stamp.isoformat() if stamp else ""


def _version_time(version: str) -> datetime | None:
    """The registration time a version name starts with (``20260101T020000Z-...``), None if it has none."""
    try:
        return datetime.strptime(version[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def _statuses(store: Store) -> dict[str, str]:
    champion = read_champion(store)
    if champion is None:
        return {}
    statuses = {champion["version"]: "champion"}
    if champion["history"]:
        statuses.setdefault(champion["history"][-1]["version"], "previous champion")
    return statuses


def model_status(store: Store, version: str) -> str:
    """What the pointer makes of a complete ``version``: "champion", "previous champion" or "candidate"."""
    return _statuses(store).get(version, "candidate")


def list_models(store: Store) -> list[ModelEntry]:
    """Every version folder in ``store``'s registry, oldest first (by registration time, then name).

    A folder with neither a model file nor a card is not a version and is left out.
    """
    root = models_root(store)
    pointer_name = posixpath.basename(champion_pointer(store))
    statuses = _statuses(store)
    entries = []
    for name in store.list_names(root):
        if name == pointer_name or name.startswith("."):
            continue
        try:
            card, problem = require_registered(store, name), None
        except (ModelNotFoundError, RegistryError) as exc:
            folder = join(root, name)
            if not any(store.exists(join(folder, f)) for f in (CARD_FILE, MODEL_FILE)):
                continue
            card, problem = None, str(exc)
        status = statuses.get(name, "candidate") if problem is None else "incomplete"
        entries.append(ModelEntry(name, card, problem, status))
    return sorted(entries, key=lambda entry: (entry.registered_at, entry.version))


def resolve_version(store: Store, version: str) -> str:
    """``version``, or the champion's version when it is "champion"."""
    if version != "champion":
        return version
    champion = read_champion(store)
    if champion is None:
        message = f"no champion in {store.url}: `aml-smear models list --store {store.url}` shows the versions there"
        raise ModelNotFoundError(message)
    return champion["version"]


def _code(card: dict) -> str:
    code = card.get("code_version")
    if not isinstance(code, dict):
        return str(code) if code is not None else "n/a"
    if code.get("commit"):
        return f"{code['commit'][:12]}{' (dirty)' if code.get('dirty') else ''}"
    return f"package {code.get('package')}"


def card_facts(card: dict) -> list[tuple[str, str]]:
    """What a card says about how its model was made, as (label, value) rows."""
    data = card.get("data") or {}
    split = card.get("split") or {}
    return [
        ("registered", str(card.get("registered_at", "n/a"))),
        ("recipe", str(card.get("recipe", "n/a"))),
        ("code", _code(card)),
        (
            "training data",
            f"{data.get('n_labelled', 'n/a')} labelled cells, "
            f"sha256 {str(data.get('sha256', 'n/a'))[:12]}",
        ),
        ("sources", ", ".join(data.get("sources") or []) or "n/a"),
        ("split", f"by {split.get('by', 'n/a')}, seed {split.get('seed', 'n/a')}"),
    ]


Facts = list[tuple[str, str, str]]
Metrics = list[tuple[str, float, float]]


def compare_cards(card_a: dict, card_b: dict) -> tuple[Facts, Metrics, bool]:
    """Two cards side by side.

    Returns:
        (facts as (label, A, B), test metrics as (name, A, B) with NaN where a card lacks one,
        whether both were tested on the same cells: the same training data and split).
    """
    facts = [
        (label, a, b)
        for (label, a), (_, b) in zip(card_facts(card_a), card_facts(card_b), strict=True)
    ]
    metrics_a, metrics_b = card_a.get("metrics") or {}, card_b.get("metrics") or {}
    metrics = [
        (name, float(metrics_a.get(name, "nan")), float(metrics_b.get(name, "nan")))
        for name in METRICS
    ]
    metrics.insert(
        0, ("test cells", float(metrics_a.get("n", "nan")), float(metrics_b.get("n", "nan")))
    )

    def test_set(card: dict) -> tuple:
        split = card.get("split") or {}
        return (card.get("data") or {}).get("sha256"), split.get("by"), split.get("seed")

    same = test_set(card_a) == test_set(card_b) and test_set(card_a)[0] is not None
    return facts, metrics, same


def model_references(store: Store) -> dict[str, list[str]]:
    """The model versions the scorings in ``store`` record: {version: [score.json paths under runs/]}.

    Every ``score.json`` at any depth under ``runs/`` counts (``runs/<run>/score.json`` and
    ``runs/<ingest>/scores/<scoring>/score.json`` alike), complete or not; Zarr arrays and shard
    markers are not walked.

    Raises:
        RegistryError: a scoring record cannot be read, so the model it needs is unknown.
    """
    runs = store.runs
    fs, root = store.resolve(runs)
    if not fs.exists(root):
        return {}
    root = root.rstrip("/")
    references: dict[str, list[str]] = {}
    folders = [root]
    while folders:
        for entry in fs.ls(folders.pop(), detail=True):
            path = entry["name"].rstrip("/")
            name = posixpath.basename(path)
            if entry["type"] == "directory":
                if not name.endswith(".zarr") and name not in _NOT_SCORINGS:
                    folders.append(path)
            elif name == SCORE_RECORD:
                where = join(runs, posixpath.relpath(path, root))
                try:
                    version = json.loads(fs.cat_file(path))["model_version"]
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    message = f"cannot tell which model the scoring {where} used ({type(exc).__name__}: {exc})"
                    raise RegistryError(message) from exc
                references.setdefault(str(version), []).append(where)
    return references


@dataclass(frozen=True)
class PrunePlan:
    """What ``prune`` keeps (version -> why) and removes (oldest first)."""

    keep: dict[str, str] = field(default_factory=dict)
    remove: list[str] = field(default_factory=list)


def plan_prune(store: Store, keep_newest: int, now: datetime | None = None) -> PrunePlan:
    """Which versions ``prune --keep N`` removes: all but the champion, the previous champion (what
    ``rollback`` returns to), the ``keep_newest`` newest complete versions, and every version a
    scoring under ``runs/`` records. An incomplete version is removed only once it is a day old
    (a younger one may be registering now) and when no scoring records it.
    """
    if keep_newest < 0:
        message = f"--keep must be 0 or more, not {keep_newest}"
        raise RegistryError(message)
    now = now or datetime.now(UTC)
    entries = list_models(store)
    references = model_references(store)
    newest = {entry.version for entry in [e for e in entries if e.complete][::-1][:keep_newest]}
    plan = PrunePlan()
    for entry in entries:
        stamp = _version_time(entry.version)
        if entry.status in ("champion", "previous champion"):
            plan.keep[entry.version] = entry.status
        elif entry.version in references:
            used = references[entry.version]
            plan.keep[entry.version] = f"used by {used[0]}" + (
                f" and {len(used) - 1} more" if len(used) > 1 else ""
            )
        elif entry.version in newest:
            plan.keep[entry.version] = f"one of the {keep_newest} newest"
        elif not entry.complete and (stamp is None or now - stamp < INCOMPLETE_GRACE):
            plan.keep[entry.version] = (
                "incomplete, may be registering now" if stamp else "incomplete, age unknown"
            )
        else:
            plan.remove.append(entry.version)
    return plan


def prune_models(store: Store, keep_newest: int, dry_run: bool = False) -> PrunePlan:
    """Remove the versions :func:`plan_prune` selects (nothing when ``dry_run``).

    First the versions are marked in the champion pointer, by a compare-and-swap
    (:func:`tasks.registry.update_champion`) that leaves out the champion and the previous champion
    of the pointer it is based on; while marked, no promotion or rollback may name them. Then each
    marked version's card goes, then its folder (so a version cut short is incomplete, never
    complete and broken), and the marks are lifted. A promotion written before the mark keeps its
    version; one after it is refused; so the pointer never names a removed version.
    """
    plan = plan_prune(store, keep_newest)
    if dry_run or not plan.remove:
        return plan
    marked = _mark_for_pruning(store, plan.remove)
    for version in plan.remove:
        if version not in marked:
            plan.keep[version] = "became the champion or the previous champion while pruning"
    removed = []
    try:
        for version in marked:
            folder = join(models_root(store), version)
            if not store.exists(folder):
                continue  # a concurrent prune removed it
            for url, recursive in ((join(folder, CARD_FILE), False), (folder, True)):
                try:
                    store.remove(url, recursive=recursive)
                except FileNotFoundError:
                    pass
            removed.append(version)
    finally:
        _unmark(store, marked)
    return PrunePlan(plan.keep, removed)


def _pruning_entries(live: dict[str, str]) -> list[dict[str, str]]:
    """The pointer's ``pruning`` list of the marks ``live`` (version -> since), by version."""
    return [{"version": v, "since": since} for v, since in sorted(live.items())]


def _mark_for_pruning(store: Store, versions: list[str]) -> list[str]:
    """Mark ``versions`` but the pointer's champion and previous champion; returns those marked.

    Raises:
        RegistryError: there is no pointer yet to mark them in (a first promotion could name one
            of them while it is removed): nothing is removed before a model is promoted.
    """
    marked: list[str] = []
    if read_champion(store) is None:
        message = (
            f"no champion in {store.url} yet: prune removes nothing before a first promotion "
            f"(`aml-smear models promote VERSION --store {store.url}`)"
        )
        raise RegistryError(message)

    def mark(current: dict | None) -> dict:
        if current is None:
            message = f"the champion pointer of {store.url} disappeared while pruning: nothing was removed"
            raise RegistryError(message)
        protected = {current["version"], *(entry["version"] for entry in current["history"][-1:])}
        marked[:] = [version for version in versions if version not in protected]
        now = datetime.now(UTC)
        live = pruning_marks(current, now)
        live.update({version: now.isoformat() for version in marked})
        return {**current, "pruning": _pruning_entries(live)}

    update_champion(store, mark)
    return marked


def _unmark(store: Store, versions: list[str]) -> None:
    """Lift the marks of ``versions`` (and any mark past its time)."""
    if not versions or read_champion(store) is None:
        return

    def unmark(current: dict | None) -> dict:
        if current is None:
            message = f"the champion pointer of {store.url} disappeared while pruning"
            raise RegistryError(message)
        live = {v: since for v, since in pruning_marks(current).items() if v not in versions}
        return {**current, "pruning": _pruning_entries(live)}

    update_champion(store, unmark)
