"""The backbone registry in the store: ``backbones/<id>/`` (weights.h5, card.json written last).

A registered backbone is a partial ResNet50 weights file (its stages up to a recipe's feature
layer, :func:`aml_model.weights.save_partial_weights`) that ``pretrain-backbone`` trained on cells,
with a card naming its sources, method, steps, augmentation, sha256 and code version. The card is
written last: a folder without one is an unfinished registration and resolves to nothing.
``backbones/_pretraining/<key>/`` holds a pretraining's checkpoint until it registers.

``--backbone-weights`` (retrain, pretrain-backbone's ``--start-from``) names a backbone as
"imagenet", "none", "shipped" (the package's, :mod:`aml_model.backbones`), a registered id, or the
path/URL of a weights file. The sha256 of the card (or of the shipped card) is checked whenever
the file is read (:func:`tasks.weights.fetch_weights_file`), so a changed file is refused.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from aml_model.backbones import SHIPPED, shipped_backbone
from aml_model.config import ModelConfig
from aml_model.errors import BackboneWeightsError, WeightsHashMismatchError
from tasks.store import Store, join

__all__ = [
    "BACKBONE_CARD",
    "BACKBONE_WEIGHTS",
    "BackboneRef",
    "backbone_folder",
    "list_backbones",
    "resolve_backbone",
    "with_backbone",
]

BACKBONE_WEIGHTS = "weights.h5"
BACKBONE_CARD = "card.json"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class BackboneRef:
    """A backbone to build a model on: its id, weights file (path or URL) and expected sha256, and card."""

    id: str
    weights_url: str
    sha256: str
    card: dict

    def summary(self) -> dict:
        """What a model card records of it."""
        keys = (
            "id",
            "sha256",
            "method",
            "sources",
            "steps",
            "epochs",
            "parent",
            "code_version",
            "created_at",
        )
        return {key: self.card.get(key) for key in keys}


def backbones_root(store: Store) -> str:
    return store.backbones


def backbone_folder(store: Store, backbone_id: str) -> str:
    return join(backbones_root(store), backbone_id)


def resolve_backbone(spec: str, store: Store) -> BackboneRef | None:
    """The registered or shipped backbone that ``spec`` names; None for "imagenet", "none" or a file.

    Raises:
        BackboneWeightsError: ``spec`` names a registration without a card (interrupted), or
            "shipped" where the package holds none.
    """
    if spec.lower() in ("imagenet", "none"):
        return None
    shipped = shipped_backbone()
    if spec == SHIPPED or (shipped and spec == shipped[1]["id"]):
        if shipped is None:
            raise BackboneWeightsError(
                "this installation ships no cell backbone: pass a registered backbone id, "
                "a weights file, or none"
            )
        path, card = shipped
        return BackboneRef(card["id"], str(path), card["sha256"], card)
    if not _ID.match(spec):
        return None
    folder = backbone_folder(store, spec)
    card_url = join(folder, BACKBONE_CARD)
    if store.exists(card_url):
        card = store.read_json(card_url)
        return BackboneRef(spec, join(folder, BACKBONE_WEIGHTS), card["sha256"], card)
    if store.exists(join(folder, BACKBONE_WEIGHTS)):
        message = (
            f"backbone {spec} in {backbones_root(store)} is not completely registered (no {BACKBONE_CARD}): "
            f"its pretraining was interrupted; run the same pretrain-backbone command again to finish it"
        )
        raise BackboneWeightsError(message)
    return None


def with_backbone(model: ModelConfig, ref: BackboneRef | None) -> ModelConfig:
    """``model`` with a resolved backbone's weights file and sha256 (unchanged for None).

    Raises:
        WeightsHashMismatchError: ``model`` expects another sha256 than the backbone's card records.
    """
    if ref is None:
        return model
    expected = model.backbone_weights_sha256
    if expected is not None and expected.lower() != ref.sha256:
        message = f"backbone {ref.id} has sha256 {ref.sha256}, expected {expected.lower()}"
        raise WeightsHashMismatchError(message)
    return dataclasses.replace(
        model, backbone_weights=ref.weights_url, backbone_weights_sha256=ref.sha256
    )


def list_backbones(store: Store) -> list[dict]:
    """The cards of every completely registered backbone in the store, oldest first."""
    root = backbones_root(store)
    if not store.exists(root):
        return []
    cards = [
        store.read_json(join(root, name, BACKBONE_CARD))
        for name in store.list_names(root)
        if not name.startswith("_") and store.exists(join(root, name, BACKBONE_CARD))
    ]
    return sorted(cards, key=lambda card: card.get("created_at", ""))
