"""The paper's full configuration, and the default recipe's, on real LMU cells, kept within CI time
by the feature cache."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from aml_model.config import ExperimentConfig
from aml_model.io import load_model
from aml_model.predict import predict_batch
from flows.parameters import RetrainOptions
from flows.retrain import retrain_and_evaluate
from tasks.store import Store
from tasks.training import load_cells
from tests.corpus import lmu_rows


@pytest.fixture
def source(lmu_cells, tmp_path):
    """50 cells of each class in the LMU class layout: the full configuration's cost is per cell."""
    source = tmp_path / "lmu-subset"
    for cls in ("MYO", "NGS"):
        (source / cls).mkdir(parents=True)
        for row in [r for r in lmu_rows(lmu_cells) if r["file"].startswith(f"{cls}/")][:50]:
            shutil.copyfile(lmu_cells / row["file"], source / row["file"])
    return source


def registered(store, version: str) -> tuple[dict, pd.DataFrame]:
    """The model card and test predictions of ``version``, after checking that the registered
    model, reloaded, gives those predictions."""
    card = json.loads((store / version / "model_card.json").read_text())
    predictions = pd.read_parquet(store / version / "test_predictions.parquet")
    loaded = load_model(store / version / "model.keras", compile=False)
    np.testing.assert_allclose(
        predict_batch(loaded, load_cells(predictions, Store(str(store)))),
        predictions["probability"],
        atol=1e-5,
    )
    return card, predictions


@pytest.mark.slow
def test_full_configuration_on_real_cells(source, tmp_path, task_runner):
    # The paper's recipe with every other parameter at its default (224x224 input, frozen ResNet50,
    # the paper's head, Adam 1e-4, 50 epochs with early stopping, the default augmented views cached
    # per training cell), but the backbone's weights: the ones available offline ("none").
    options = RetrainOptions(recipe="paper", backbone_weights="none")
    result = retrain_and_evaluate.with_options(task_runner=task_runner)(
        sources=[str(source)], store=str(tmp_path / "store"), options=options
    )
    store = tmp_path / "store" / "models"
    card, predictions = registered(store, result["version"])
    paper = ExperimentConfig().to_dict()
    paper["model"]["backbone_weights"] = "none"
    assert card["config"] == paper, "the paper's configuration, nothing shrunk"
    assert card["split"]["by"] == "cell" and card["split"]["sizes"] == {
        "train": 80,
        "val": 10,
        "test": 10,
    }
    views = card["augment_views"]
    assert (
        views >= 1 and result["embedded"] == 80 * (1 + views) + 10
    )  # train cells and their views, val cells

    # The first model of a store becomes the champion: the pointer names it.
    assert result["promoted"] and result["reason"].startswith("no champion yet")
    assert json.loads((store / "champion.json").read_text())["version"] == result["version"]

    # A blast outranks a neutrophil in the registered model's test predictions: blasts are larger,
    # with finer chromatin, even to an untrained backbone.
    blast = (predictions["label"] == "blast").to_numpy()
    p = predictions["probability"].to_numpy()
    above = p[blast][:, None] - p[~blast][None, :]
    auc = float(((above > 0) + 0.5 * (above == 0)).mean())
    print(f"full configuration, untrained backbone, LMU subset test ROC AUC {auc:.3f}")
    assert result["metrics"]["roc_auc"] == pytest.approx(auc, abs=1e-9)
    assert auc >= 0.8
    assert card["metrics"]["n"] == 10 and card["metrics"]["tp"] + card["metrics"]["fn"] == 5


@pytest.mark.slow
def test_the_default_recipe_at_full_size_on_real_cells(source, tmp_path, task_runner):
    from aml_model.config import DEFAULT_RECIPE, ModelConfig

    result = retrain_and_evaluate.with_options(task_runner=task_runner)(
        sources=[str(source)],
        store=str(tmp_path / "store"),
        options=RetrainOptions(backbone_weights="none"),
    )
    card, _ = registered(tmp_path / "store" / "models", result["version"])
    expected = ExperimentConfig.for_recipe(
        DEFAULT_RECIPE, ModelConfig(backbone_weights="none")
    ).to_dict()
    assert (
        DEFAULT_RECIPE == "robust"
        and card["config"] == expected
        and card["config"]["model"]["image_size"] == 224
    )
    # Pooled third-stage statistics: what the cache holds per view.
    assert card["backbone"]["id"].endswith("-nucleus-channel-conv3_block4_out-mean_std")
    assert result["metrics"]["roc_auc"] >= 0.8
