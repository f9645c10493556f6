"""The cell backbone shipped with the package: its file is what its card says, and it loads into the robust recipe."""

import hashlib

import numpy as np
import pytest

from aml_model.backbones import SHIPPED, shipped_backbone
from aml_model.config import ExperimentConfig, ModelConfig
from aml_model.weights import partial_weights_layers


def test_the_shipped_backbone_is_the_file_its_card_describes():
    path, card = shipped_backbone()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == card["sha256"]
    assert path.name == card["file"] and path.stat().st_size < 4_000_000
    robust = ExperimentConfig.for_recipe("robust").model
    layers = partial_weights_layers(path)
    assert layers[-1] == card["layers_up_to"] == robust.feature_layer
    assert card["method"] == "simclr" and card["recipe"] == "robust" and card["steps"] > 0
    assert card["train_seconds"] > 0 and "aml-smear pretrain-backbone" in " ".join(card["command"])
    assert card["id"] != SHIPPED


@pytest.mark.slow
def test_the_robust_recipe_at_224_px_reads_cells_through_the_shipped_stages(lmu_cells):
    """Full size, no training: the shipped backbone gives other features than a random one."""
    from aml_model.architecture import build_backbone, input_normalisation, seed_weights
    from aml_model.preprocess import PreprocessConfig, decode_cell, normalise_for_resnet50

    path, card = shipped_backbone()
    config = ExperimentConfig.for_recipe(
        "robust", ModelConfig(backbone_weights=str(path), backbone_weights_sha256=card["sha256"])
    ).model
    files = (
        sorted((lmu_cells / "MYO").glob("*.jpg"))[:2]
        + sorted((lmu_cells / "NGS").glob("*.jpg"))[:2]
    )
    cells = np.stack(
        [decode_cell(f.read_bytes(), f.name, PreprocessConfig()) for f in files]
    ).astype(np.float32)
    images = normalise_for_resnet50(cells)
    for layer in input_normalisation(config):
        images = layer(images)
    shipped = build_backbone(config).predict(np.asarray(images), verbose=0)
    random = seed_weights(
        build_backbone(
            ModelConfig(
                **{**config.__dict__, "backbone_weights": "none", "backbone_weights_sha256": None}
            )
        ),
        0,
    )
    assert shipped.shape == (4, 1024) and np.isfinite(shipped).all()
    assert not np.allclose(shipped, random.predict(np.asarray(images), verbose=0), atol=1e-3)
