"""The model registry in the store: models/<version>/ and the champion pointer."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime

from aml_model.errors import AmlSmearError
from tasks import storage

__all__ = ["ModelNotFoundError", "ModelRef", "champion_pointer", "model_input_size", "register_model",
           "resolve_model", "set_champion"]

MODEL_FILE = "model.keras"
CARD_FILE = "model_card.json"


class ModelNotFoundError(AmlSmearError, FileNotFoundError):
    """No model where one was asked for."""


@dataclass(frozen=True)
class ModelRef:
    """A model to score with: where its .keras file is, its version, and its input size (pixels)."""

    url: str
    version: str
    image_size: int


def models_root(store: str) -> str:
    return storage.join(store, "models")


def champion_pointer(store: str) -> str:
    return storage.join(models_root(store), "champion.json")


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


def resolve_model(spec: str, store: str, storage_options: dict | None = None) -> ModelRef:
    """Find the model that ``spec`` names.

    Args:
        spec: "champion", a registered version, or the path/URL of a .keras file.
        store: the run store holding ``models/``.
        storage_options: fsspec options for the store and the model URL.

    Raises:
        ModelNotFoundError: nothing there; the message says how to get a model.
    """
    options = storage_options or {}
    if spec == "champion":
        pointer = champion_pointer(store)
        if not storage.exists(pointer, options):
            message = (f"no champion model in {store} ({pointer} is missing): train one with "
                       f"`aml-smear retrain SOURCE --store {store}`, or pass --model PATH_TO.keras")
            raise ModelNotFoundError(message)
        spec = storage.read_json(pointer, options)["version"]
    registered = storage.join(models_root(store), spec, MODEL_FILE)
    if "/" not in spec and storage.exists(registered, options):
        card_url = storage.join(models_root(store), spec, CARD_FILE)
        if not storage.exists(card_url, options):
            # The card is written last: without it the registration was interrupted.
            message = (f"model version {spec} in {models_root(store)} is not completely registered (no {CARD_FILE}): "
                       f"its registration was interrupted; retrain, or use another version")
            raise ModelNotFoundError(message)
        card = storage.read_json(card_url, options)
        return ModelRef(registered, spec, int(card["config"]["model"]["image_size"]))
    if not storage.exists(spec, options):
        message = (f"model {spec!r} is neither a version registered in {models_root(store)} nor an existing "
                   f".keras file: train one with `aml-smear retrain SOURCE --store {store}`")
        raise ModelNotFoundError(message)
    data = storage.read_bytes(spec, options)
    return ModelRef(spec, "file-" + hashlib.sha256(data).hexdigest()[:12], model_input_size(data, spec))


def register_model(model_file: str, card: dict, store: str, storage_options: dict | None = None,
                   extra_files: dict[str, bytes] | None = None) -> ModelRef:
    """Copy a local .keras file, its card and extra files (figures) into models/<version>/.

    The version is the registration time plus the model file's hash. The card is written
    last, so a version folder with a card is complete.
    """
    with open(model_file, "rb") as handle:
        data = handle.read()
    now = datetime.now(UTC)
    version = f"{now:%Y%m%dT%H%M%SZ}-{hashlib.sha256(data).hexdigest()[:8]}"
    folder = storage.join(models_root(store), version)
    storage.write_bytes(storage.join(folder, MODEL_FILE), data, storage_options)
    for name, content in (extra_files or {}).items():
        storage.write_bytes(storage.join(folder, name), content, storage_options)
    card = {**card, "version": version, "registered_at": now.isoformat()}
    storage.write_json(storage.join(folder, CARD_FILE), card, storage_options)
    return ModelRef(storage.join(folder, MODEL_FILE), version, int(card["config"]["model"]["image_size"]))


def set_champion(store: str, version: str, storage_options: dict | None = None, reason: str = "") -> None:
    """Point models/champion.json at ``version``, replacing the pointer in one write."""
    card_url = storage.join(models_root(store), version, CARD_FILE)
    if not storage.exists(card_url, storage_options):
        message = f"model version {version} is not completely registered in {store} (no {CARD_FILE})"
        raise ModelNotFoundError(message)
    storage.write_json(champion_pointer(store), {"version": version, "promoted_at": datetime.now(UTC).isoformat(),
                                                 "reason": reason}, storage_options)
