import dataclasses
import json

import pytest

from aml_model.config import ModelConfig
from aml_model.errors import BackboneWeightsError, WeightsHashMismatchError
from tasks.backbones import (
    BACKBONE_CARD,
    BACKBONE_WEIGHTS,
    backbone_folder,
    list_backbones,
    resolve_backbone,
    with_backbone,
)
from tasks.store import Store


def _register(
    store, backbone_id: str, sha256: str = "ab" * 32, card: bool = True, created: str = "2026-12-04"
) -> None:
    folder = store / "backbones" / backbone_id
    folder.mkdir(parents=True)
    (folder / BACKBONE_WEIGHTS).write_bytes(b"weights")
    if card:
        (folder / BACKBONE_CARD).write_text(
            json.dumps(
                {
                    "id": backbone_id,
                    "sha256": sha256,
                    "method": "simclr",
                    "steps": 10,
                    "created_at": created,
                }
            )
        )


def test_imagenet_none_and_files_are_not_registered_backbones(tmp_path):
    for spec in ("imagenet", "none", "None", str(tmp_path / "w.h5"), "s3://bucket/w.h5"):
        assert resolve_backbone(spec, Store(str(tmp_path))) is None


def test_a_registered_backbone_resolves_to_its_weights_and_card_sha256(tmp_path):
    _register(tmp_path, "cells-0123456789ab", sha256="cd" * 32)
    ref = resolve_backbone("cells-0123456789ab", Store(str(tmp_path)))
    assert (
        ref.weights_url
        == f"{backbone_folder(Store(str(tmp_path)), 'cells-0123456789ab')}/{BACKBONE_WEIGHTS}"
    )
    assert ref.sha256 == "cd" * 32
    assert ref.summary()["method"] == "simclr" and ref.summary()["steps"] == 10
    model = with_backbone(ModelConfig(backbone_weights="cells-0123456789ab"), ref)
    assert (model.backbone_weights, model.backbone_weights_sha256) == (ref.weights_url, "cd" * 32)
    assert with_backbone(model, None) is model


def test_a_backbone_without_its_card_is_an_interrupted_registration(tmp_path):
    _register(tmp_path, "cells-half", card=False)
    with pytest.raises(
        BackboneWeightsError,
        match="cells-half .* is not completely registered .*run the same "
        "pretrain-backbone command again",
    ):
        resolve_backbone("cells-half", Store(str(tmp_path)))


def test_an_expected_sha256_other_than_the_cards_is_refused(tmp_path):
    _register(tmp_path, "cells-x", sha256="cd" * 32)
    ref = resolve_backbone("cells-x", Store(str(tmp_path)))
    with pytest.raises(
        WeightsHashMismatchError, match=f"cells-x has sha256 {'cd' * 32}, expected {'ef' * 32}"
    ):
        with_backbone(dataclasses.replace(ModelConfig(), backbone_weights_sha256="EF" * 32), ref)


def test_listing_shows_complete_registrations_oldest_first(tmp_path):
    assert list_backbones(Store(str(tmp_path))) == []
    _register(tmp_path, "site-b", created="2026-12-05")
    _register(tmp_path, "cells-a", created="2026-12-04")
    _register(tmp_path, "half", card=False)
    (tmp_path / "backbones" / "_pretraining" / "0123").mkdir(parents=True)
    assert [card["id"] for card in list_backbones(Store(str(tmp_path)))] == ["cells-a", "site-b"]


def test_shipped_names_the_packages_backbone_by_alias_or_id(tmp_path):
    from aml_model.backbones import shipped_backbone

    path, card = shipped_backbone()
    for spec in ("shipped", card["id"]):
        ref = resolve_backbone(spec, Store(str(tmp_path)))
        assert (ref.id, ref.weights_url, ref.sha256) == (card["id"], str(path), card["sha256"])
