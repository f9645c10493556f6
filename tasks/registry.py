"""The model registry in the store: models/<version>/ and the champion pointer."""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import re
import subprocess
import uuid
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fsspec

from aml_model.errors import AmlSmearError
from tasks.settings import RegistrySettings, variable
from tasks.store import Store, is_local, join

__all__ = [
    "MODEL_PREFIXES_ENV",
    "ModelNotAllowedError",
    "ModelNotFoundError",
    "ModelRef",
    "RegistryError",
    "allow_model_file",
    "allowed_model_prefixes",
    "champion_card",
    "champion_pointer",
    "code_version",
    "finish_registration",
    "model_input_size",
    "names_a_file",
    "read_champion",
    "register_model",
    "require_registered",
    "resolve_model",
    "rollback_champion",
    "set_champion",
    "stage_model",
    "pruning_marks",
    "update_champion",
]

MODEL_FILE = "model.keras"
CARD_FILE = "model_card.json"
# Earlier champions kept in the pointer, newest last: what `rollback` returns to.
HISTORY_LIMIT = 100
#: How long a prune's mark in the pointer protects the versions it is removing; a prune takes
#: seconds, so an older mark is one a killed prune left behind.
PRUNE_MARK_TTL = timedelta(hours=1)
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: Comma-separated folders or URL prefixes (or single files) that a scoring's ``model`` path may
#: name besides the store's ``models/``; a deployment run's caller cannot widen it.
MODEL_PREFIXES_ENV = variable("model_prefixes")  # tasks.settings.RegistrySettings parses it
# The checkout this code runs from, when it runs from one (an editable install or the repository root).
_CODE_ROOT = Path(__file__).resolve().parents[1]


class ModelNotFoundError(AmlSmearError, FileNotFoundError):
    """No model where one was asked for."""


class ModelNotAllowedError(AmlSmearError, PermissionError):
    """A model file outside the allowed prefixes: no process loads it."""


class RegistryError(AmlSmearError, ValueError):
    """A registry operation that cannot be done as asked (no earlier champion, an unreadable card...)."""


@dataclass(frozen=True)
class ModelRef:
    """A model to score with: where its .keras file is, its version, and its input size (pixels).

    ``precision_agreement`` is what its card recorded at training: the largest |p - p_float32| of
    each reduced precision on its test cells (:func:`aml_model.precision.precision_agreement`);
    None when unknown (a bare file, an older card), and ``precision="auto"`` then scores in float32.
    ``sha256`` is the .keras file's digest (the card's ``model_sha256``; None for an older card),
    which a worker's cached copy is checked against before it is loaded.
    """

    url: str
    version: str
    image_size: int
    precision_agreement: dict[str, float] | None = None
    sha256: str | None = None


def models_root(store: Store) -> str:
    return store.models


def champion_pointer(store: Store) -> str:
    return join(models_root(store), "champion.json")


def model_input_size(data: bytes, source: str) -> int:
    """Read the square input size from a .keras file's config.json, without TensorFlow."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            config = json.loads(archive.read("config.json"))
        shape = config["config"]["layers"][0]["config"]["batch_shape"]
    except (zipfile.BadZipFile, KeyError, IndexError, json.JSONDecodeError) as exc:
        message = f"{source} is not a Keras .keras model file: {exc}"
        raise ModelNotFoundError(message) from exc
    return int(shape[1])


def allowed_model_prefixes(store: Store) -> list[str]:
    """Where a model named by path may lie: the store's ``models/``, then :data:`MODEL_PREFIXES_ENV`'s entries."""
    extra = list(RegistrySettings.read().model_prefixes)
    return [models_root(store), *extra]


def names_a_file(spec: str) -> bool:
    """Whether a ``model`` value is a path or URL, not a version name (``champion`` included)."""
    return not _VERSION.fullmatch(spec) or spec.endswith(".keras")


def allow_model_file(path: str) -> None:
    """Add one model file to this process's allowed prefixes: the CLI's user named it on the command line.

    Raises:
        ModelNotAllowedError: a path with a comma, which would read as two prefixes.
    """
    if "," in path:
        message = f"model path {path!r} has a comma: copy or link the file to a path without one"
        raise ModelNotAllowedError(message)
    os.environ[MODEL_PREFIXES_ENV] = ",".join([*RegistrySettings.read().model_prefixes, path])


def _canonical(url: str) -> str:
    """``protocol://path`` with ``..`` and ``.`` resolved (never above a bucket); a local path
    resolved through its links.

    Raises:
        ModelNotAllowedError: a chained URL (``a::b``), whose opened file is not the one named first.
    """
    if "::" in url:
        message = f"model {url!r} is a chained fsspec URL: name the file itself"
        raise ModelNotAllowedError(message)
    fs, path = fsspec.core.url_to_fs(url)
    if is_local(fs):
        return os.path.realpath(path)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return f"{protocol}://{os.path.normpath('/' + path).lstrip('/')}"


def _require_allowed(spec: str, store: Store) -> None:
    """Refuse a model path outside :func:`allowed_model_prefixes`, before anything reads it.

    Raises:
        ModelNotAllowedError: naming the prefixes and the variable that adds one.
    """
    target = _canonical(spec)
    for prefix in allowed_model_prefixes(store):
        root = _canonical(prefix)
        if target == root or target.startswith(root.rstrip("/") + "/"):
            return
    message = (
        f"model {spec!r} is not under an allowed prefix ({', '.join(allowed_model_prefixes(store))}): "
        f"register it (aml-smear retrain, or models in the store), or add its folder to {MODEL_PREFIXES_ENV} "
        f"where the flow runs"
    )
    raise ModelNotAllowedError(message)


def resolve_model(spec: str, store: Store) -> ModelRef:
    """Find the model that ``spec`` names.

    Args:
        spec: "champion", a registered version, or the path/URL of a .keras file under
            :func:`allowed_model_prefixes`.
        store: the run store holding ``models/``; a model URL is read with its options too.

    Raises:
        ModelNotFoundError: nothing there; the message says how to get a model.
        ModelNotAllowedError: a path outside the allowed prefixes (nothing is read).
    """
    if spec == "champion":
        current = read_champion(store)
        if current is None:
            message = (
                f"no champion model in {store.url} ({champion_pointer(store)} is missing): train one with "
                f"`aml-smear retrain SOURCE --store {store.url}`, or pass --model PATH_TO.keras"
            )
            raise ModelNotFoundError(message)
        spec = current["version"]
    registered = join(models_root(store), spec, MODEL_FILE)
    if not names_a_file(spec) and store.exists(registered):
        card_url = join(models_root(store), spec, CARD_FILE)
        if not store.exists(card_url):
            # The card is written last: without it the registration was interrupted.
            message = (
                f"model version {spec} in {models_root(store)} is not completely registered (no {CARD_FILE}): "
                f"its registration was interrupted; retrain, or use another version"
            )
            raise ModelNotFoundError(message)
        card = store.read_json(card_url)
        return ModelRef(
            registered,
            spec,
            int(card["config"]["model"]["image_size"]),
            _agreement(card),
            card.get("model_sha256"),
        )
    # A bare version name that is not registered: say so, not that a path is not allowed.
    if names_a_file(spec) or store.exists(spec):
        _require_allowed(spec, store)
    if not store.exists(spec):
        message = (
            f"model {spec!r} is neither a version registered in {models_root(store)} nor an existing "
            f".keras file: train one with `aml-smear retrain SOURCE --store {store.url}`"
        )
        raise ModelNotFoundError(message)
    data = store.read_bytes(spec)
    digest = hashlib.sha256(data).hexdigest()
    return ModelRef(spec, "file-" + digest[:12], model_input_size(data, spec), sha256=digest)


def stage_model(model_file: str, store: Store) -> ModelRef:
    """Copy a local .keras file into models/<version>/model.keras, without a card yet.

    The version is the registration time plus the model file's hash. A version folder without
    a card is an unfinished registration: nothing resolves or promotes it
    (:func:`resolve_model`, :func:`require_registered`) until :func:`finish_registration`
    writes the card, and ``models prune`` removes it once it is a day old. Training tasks stage
    the model they trained, so that only its URL travels back to the flow.
    """
    with open(model_file, "rb") as handle:
        data = handle.read()
    digest = hashlib.sha256(data).hexdigest()
    version = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{digest[:8]}"
    url = join(models_root(store), version, MODEL_FILE)
    store.write_bytes(url, data)
    return ModelRef(url, version, model_input_size(data, model_file), sha256=digest)


def finish_registration(
    ref: ModelRef, card: dict, store: Store, extra_files: dict[str, bytes] | None = None
) -> ModelRef:
    """Write a staged model's extra files (figures), then its card: the card last, so a version
    folder with a card is complete. The card gains code_version, version and registered_at."""
    folder = join(models_root(store), ref.version)
    for name, content in (extra_files or {}).items():
        store.write_bytes(join(folder, name), content)
    card = {
        **card,
        "code_version": code_version(),
        "version": ref.version,
        "model_sha256": ref.sha256,
        "registered_at": datetime.now(UTC).isoformat(),
    }
    store.write_json(join(folder, CARD_FILE), card)
    return ModelRef(
        ref.url,
        ref.version,
        int(card["config"]["model"]["image_size"]),
        _agreement(card),
        ref.sha256,
    )


def _agreement(card: dict) -> dict[str, float] | None:
    return (card.get("inference") or {}).get("max_abs_dp_vs_float32")


def register_model(
    model_file: str, card: dict, store: Store, extra_files: dict[str, bytes] | None = None
) -> ModelRef:
    """Copy a local .keras file, its card and extra files (figures) into models/<version>/
    (:func:`stage_model`, then :func:`finish_registration`)."""
    ref = stage_model(model_file, store)
    return finish_registration(ref, card, store, extra_files)


def _git(root: Path, *args: str) -> str:
    # GIT_OPTIONAL_LOCKS=0: `git status` must not take the index lock of a checkout others work in.
    result = subprocess.run(
        ["git", "-C", str(root), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
    )
    return result.stdout.strip()


def code_version(root: Path | None = None) -> dict:
    """The code that registers a model, for its card.

    Returns:
        ``{"package": <aml-smear version>, "commit": <git commit>, "dirty": <tracked files changed>}``
        when the code runs from a git checkout (``root``, default this repository); without one
        (an installed wheel, no git, a checkout git refuses to read) the commit an image build
        recorded in the package (:mod:`tasks.build_info`), else ``commit`` and ``dirty`` are None.
        Untracked files do not make the checkout dirty.
    """
    from tasks.build_info import read_build_commit

    default = root is None
    root = (root or _CODE_ROOT).resolve()
    try:
        package = importlib.metadata.version("aml-smear")
    except importlib.metadata.PackageNotFoundError:
        package = "unknown"
    # Without a checkout, the commit an image build recorded in this package (tasks/build_info.py).
    built = read_build_commit() if default else None
    unknown = {
        "package": package,
        "commit": built[0] if built else None,
        "dirty": built[1] if built else None,
    }
    try:
        # Only the checkout the code lives in: an installed package inside another repository is not it.
        if Path(_git(root, "rev-parse", "--show-toplevel")).resolve() != root:
            return unknown
        commit = _git(root, "rev-parse", "HEAD")
        dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return unknown
    return {"package": package, "commit": commit, "dirty": dirty}


def require_registered(store: Store, version: str) -> dict:
    """The card of a completely registered ``version``: its card readable, its model file present.

    Raises:
        ModelNotFoundError: no such version, or its registration is incomplete.
        RegistryError: the version name is not one, or its card is not a readable model card.
    """
    if not isinstance(version, str) or not _VERSION.match(version):
        message = f"{version!r} is not a model version name (letters, digits, '.', '_' and '-')"
        raise RegistryError(message)
    folder = join(models_root(store), version)
    card_url, model_url = join(folder, CARD_FILE), join(folder, MODEL_FILE)
    if not store.exists(card_url):
        if store.exists(model_url):
            message = f"model version {version} is not completely registered in {store.url} (no {CARD_FILE})"
        else:
            message = (
                f"model version {version} is not registered in {models_root(store)}: "
                f"`aml-smear models list --store {store.url}` shows the versions there"
            )
        raise ModelNotFoundError(message)
    try:
        card = store.read_json(card_url)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        message = f"the card of model version {version} ({card_url}) is not readable JSON: {exc}"
        raise RegistryError(message) from exc
    if not isinstance(card, dict) or card.get("version", version) != version:
        found = card.get("version") if isinstance(card, dict) else type(card).__name__
        message = f"{card_url} is not the card of model version {version} (it names {found!r})"
        raise RegistryError(message)
    if not store.exists(model_url):
        message = (
            f"model version {version} has a card but no {MODEL_FILE} in {folder}: it cannot be used"
        )
        raise ModelNotFoundError(message)
    return card


def read_champion(store: Store) -> dict | None:
    """The champion pointer (``version``, ``promoted_at``, ``reason``, ``history``, ``pruning``,
    ``serial``), None when there is none.

    ``history`` lists the earlier champions, newest last (absent from pointers written before it was
    kept); ``pruning`` the versions a prune in progress is removing; ``serial`` counts the pointer's
    writes (absent before compare-and-swap writes).

    Raises:
        RegistryError: the pointer is not readable.
    """
    pointer = champion_pointer(store)
    if not store.exists(pointer):
        return None
    return _parse_pointer(store.read_bytes(pointer), pointer)


def champion_card(store: Store) -> dict | None:
    """The champion's model card, None when the store has no champion.

    Raises:
        ModelNotFoundError, RegistryError: the pointer names a version that is not completely registered.
    """
    pointer = read_champion(store)
    return None if pointer is None else require_registered(store, pointer["version"])


def _parse_pointer(
    raw: bytes | None, pointer: str, tolerate_unreadable: bool = False
) -> dict | None:
    """A pointer's JSON with its ``history`` and ``pruning`` lists, None when there is none (or, with
    ``tolerate_unreadable``, when it is not readable).

    Raises:
        RegistryError: the pointer is not readable (without ``tolerate_unreadable``).
    """
    if raw is None:
        return None
    try:
        current = json.loads(raw)
        if not isinstance(current, dict) or not isinstance(current.get("version"), str):
            message = f"the champion pointer {pointer} names no version"
            raise RegistryError(message)
    except (json.JSONDecodeError, UnicodeDecodeError, RegistryError) as exc:
        if tolerate_unreadable:
            return None
        if isinstance(exc, RegistryError):
            raise
        message = f"the champion pointer {pointer} is not readable JSON: {exc}"
        raise RegistryError(message) from exc
    return {
        **current,
        "history": list(current.get("history") or []),
        "pruning": list(current.get("pruning") or []),
    }


def update_champion(store: Store, change, tolerate_unreadable: bool = False) -> dict:
    """Replace the champion pointer by ``change(current pointer or None)``, as a compare-and-swap.

    Every write of ``models/champion.json`` goes through here (:meth:`tasks.store.Store.update_object`): a write
    based on a pointer that another writer has replaced meanwhile is not made, and ``change`` is
    asked again with the new pointer, so no promotion, rollback or prune mark is ever lost.
    ``change`` returns the new pointer (``version``, ``promoted_at``, ``reason``, ``history``,
    ``pruning``) or raises to refuse; ``serial`` is counted here.

    Returns:
        The pointer written.
    """
    pointer = champion_pointer(store)
    written: dict = {}

    def apply(raw: bytes | None) -> bytes:
        current = _parse_pointer(raw, pointer, tolerate_unreadable)
        new = change(current)
        written.clear()
        written.update(
            new,
            history=new["history"][-HISTORY_LIMIT:],
            serial=(current or {}).get("serial", 0) + 1,
            write_id=uuid.uuid4().hex,
        )
        if not written.get("pruning"):
            written.pop("pruning", None)
        return json.dumps(written, indent=2).encode()

    store.update_object(pointer, apply)
    return dict(written)


def pruning_marks(current: dict | None, now: datetime | None = None) -> dict[str, str]:
    """The versions a prune in progress is removing (version -> when it marked them), from a pointer;
    marks older than :data:`PRUNE_MARK_TTL` are a prune that died and count no more."""
    now = now or datetime.now(UTC)
    marks = {}
    for mark in (current or {}).get("pruning", []):
        if now - datetime.fromisoformat(mark["since"]) < PRUNE_MARK_TTL:
            marks[mark["version"]] = mark["since"]
    return marks


def _refuse_pruned(store: Store, versions: list[str], current: dict | None) -> None:
    """Refuse to name a version that a prune in progress is removing (it marked it in the pointer)."""
    pruning = sorted(set(versions) & set(pruning_marks(current)))
    if pruning:
        message = (
            f"model version {', '.join(pruning)} is being removed by `aml-smear models prune` in {store.url}; "
            f"choose another version, or try again once the prune has finished"
        )
        raise RegistryError(message)


def set_champion(store: Store, version: str, reason: str = "") -> dict:
    """Point models/champion.json at ``version``, as a compare-and-swap (:func:`update_champion`).

    The version must be completely registered when the pointer is written (:func:`require_registered`,
    checked against the pointer the write is based on) and not marked by a prune in progress. The
    champion it replaces goes to the end of the pointer's ``history``, which
    :func:`rollback_champion` returns to. An unreadable pointer is replaced (its history is lost),
    so a promotion is never blocked by it.

    Returns:
        The pointer written.
    """

    def change(current: dict | None) -> dict:
        _refuse_pruned(store, [version], current)
        require_registered(store, version)
        history = current["history"] if current else []
        if current and current["version"] != version:
            history = [
                *history,
                {key: current.get(key) for key in ("version", "promoted_at", "reason")},
            ]
        return {
            "version": version,
            "promoted_at": datetime.now(UTC).isoformat(),
            "reason": reason,
            "history": history,
            "pruning": (current or {}).get("pruning", []),
        }

    return update_champion(store, change, tolerate_unreadable=True)


def rollback_champion(store: Store) -> tuple[str, str]:
    """Make the previous champion the champion again, as a compare-and-swap (:func:`update_champion`).

    Returns:
        (the version rolled back from, the champion now).

    Raises:
        RegistryError: no champion, no earlier champion recorded, or the new champion or the new
            previous one is being pruned.
        ModelNotFoundError: the previous champion is no longer completely registered.
    """
    rolled_back_from: list[str] = []  # the attempt that was written appends last

    def change(current: dict | None) -> dict:
        if current is None or not current["history"]:
            what = (
                "no champion"
                if current is None
                else f"no champion before {current['version']} is recorded"
            )
            message = (
                f"nothing to roll back to in {store.url}: {what}; choose one with "
                f"`aml-smear models promote VERSION --store {store.url}`"
            )
            raise RegistryError(message)
        previous = current["history"][-1]["version"]
        # The one before becomes "previous champion", which a prune must not be removing either.
        _refuse_pruned(store, [entry["version"] for entry in current["history"][-2:]], current)
        try:
            require_registered(store, previous)
        except (ModelNotFoundError, RegistryError) as exc:
            message = (
                f"cannot roll back to the previous champion {previous}: {exc}; choose another with "
                f"`aml-smear models promote VERSION --store {store.url}`"
            )
            raise type(exc)(message) from exc
        rolled_back_from.append(current["version"])
        return {
            "version": previous,
            "promoted_at": datetime.now(UTC).isoformat(),
            "reason": f"rolled back from {current['version']}",
            "history": current["history"][:-1],
            "pruning": current["pruning"],
        }

    written = update_champion(store, change)
    return rolled_back_from[-1], written["version"]


class ChampionExistsError(RegistryError):
    """Bootstrap was asked to make the first champion of a store that has one."""


def require_bootstrappable(store: Store, force: bool = False) -> dict | None:
    """The champion pointer before a bootstrap: None for an empty registry; the current pointer when
    ``force`` (bootstrap then replaces it, and rollback restores it).

    Raises:
        ChampionExistsError: the store has a champion and ``force`` is false.
    """
    current = read_champion(store)
    if current and not force:
        message = (
            f"{store.url} already has champion {current['version']}; nothing done (the nightly retrains "
            f"it; --force trains and promotes another)"
        )
        raise ChampionExistsError(message)
    return current


def promote_bootstrapped(store: Store, version: str, promoted: bool) -> None:
    """Make ``version``, just trained by bootstrap, the champion, unless its retraining promoted it
    already (it does not when an existing champion, replaced with ``force``, scored higher)."""
    if not promoted:
        set_champion(store, version, reason="aml-smear bootstrap --force")
