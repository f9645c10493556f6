"""Retraining on several labs at once: balance, per-source and per-type figures, the collapse guard."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from prefect.artifacts import Artifact

from aml_model.errors import TrainingCollapsedError
from flows.parameters import RetrainOptions, nest_options
from flows.retrain import retrain_and_evaluate
from tests.corpus import compose_class_source

PBC_TYPES = {"LYT": "typical lymphocyte", "MON": "monocyte", "NGS": "segmented neutrophil"}


def run_retrain(task_runner, **parameters):
    defaults = dict(epochs=5, patience=3, backbone_weights="none", image_size=48, augment_views=1)
    return retrain_and_evaluate.with_options(task_runner=task_runner)(
        **nest_options({**defaults, **parameters}, RetrainOptions)
    )


@pytest.fixture(scope="module")
def two_labs(lmu_cells, pbc_cells, tmp_path_factory):
    root = tmp_path_factory.mktemp("labs")
    lmu = compose_class_source(lmu_cells, root / "lmu", {"MYO": ("MYO", 40), "NGS": ("NGS", 40)})
    pbc = compose_class_source(pbc_cells, root / "pbc", {code: (code, 20) for code in PBC_TYPES})
    return str(lmu), str(pbc)


def test_two_labs_train_together_with_counts_and_rates_per_source_and_type(
    two_labs, tmp_path, task_runner
):
    lmu, pbc = two_labs
    store = tmp_path / "store"
    result = run_retrain(task_runner, sources=[lmu, pbc], store=str(store), recipe="robust")
    card = json.loads((store / "models" / result["version"] / "model_card.json").read_text())
    assert (
        card["recipe"] == "robust" and card["config"]["model"]["stain_normalisation"] == "channel"
    )
    assert card["config"]["train"]["augment"]["scale"] == 0.5
    assert card["data"]["per_source"] == {
        lmu: {"blast": 40, "normal": 40},
        pbc: {"blast": 0, "normal": 60},
    }
    train_counts = card["data"]["train_per_source"]
    assert (
        train_counts[lmu]["blast"] == train_counts[lmu]["normal"] == 32
        and train_counts[pbc]["normal"] == 48
    )
    assert card["backbone"]["id"].endswith("-nucleus-channel-conv3_block4_out-mean_std")

    rows = pd.DataFrame(card["evaluation"]["by_source_and_type"])
    # The split keeps every source and type in the test set (10% of each).
    expected = {
        (lmu, "myeloblast"): 4,
        (lmu, "segmented neutrophil"): 4,
        **{(pbc, name): 2 for name in PBC_TYPES.values()},
    }
    assert (
        dict(zip(zip(rows["source"], rows["cell_type"], strict=True), rows["n"], strict=True))
        == expected
    )
    assert rows.set_index(["source", "cell_type"]).loc[(lmu, "myeloblast"), "n_blast"] == 4
    by_source = pd.DataFrame(card["evaluation"]["by_source"]).set_index("source")
    assert not np.isnan(by_source.loc[lmu, "roc_auc"]) and np.isnan(by_source.loc[pbc, "roc_auc"])
    # The rates are those of the registered test predictions.
    predictions = pd.read_parquet(store / "models" / result["version"] / "test_predictions.parquet")
    assert by_source.loc[lmu, "blast_like"] + by_source.loc[pbc, "blast_like"] == int(
        (predictions["probability"] >= 0.5).sum()
    )
    assert Artifact.get("retrain-rates-by-type") is not None
    # The cells to review are the misclassified test predictions (at most 10), named by their files.
    wrong = predictions[(predictions["probability"] >= 0.5) != (predictions["label"] == "blast")]
    to_review = pd.DataFrame(
        card["evaluation"]["to_review"], columns=["cell_id", "source_uri", "probability"]
    )
    assert len(to_review) == min(len(wrong), 10)
    assert set(to_review["cell_id"]) <= set(wrong["cell_id"])
    assert to_review.set_index("cell_id")["probability"].to_dict() == pytest.approx(
        wrong.set_index("cell_id")["probability"].loc[to_review["cell_id"]].to_dict()
    )
    assert all(uri.startswith((lmu, pbc)) for uri in to_review["source_uri"])
    assert (
        f"{len(to_review)} misclassified test cells to review"
        in Artifact.get("retrain-report").data
    )
    if len(wrong):  # three in this run; the artifact is this model's and names them
        review = Artifact.get("retrain-cells-to-review")
        assert review.description.startswith(result["version"])
        assert all(cell in review.data for cell in to_review["cell_id"])
    assert result["training_attempts"][-1]["collapsed"] is False
    assert card["training_attempts"] == result["training_attempts"]


def test_the_feature_cache_and_the_registered_model_normalise_alike(
    two_labs, tmp_path, task_runner
):
    """The head learns on cached features; the model scores through its own layers: both must apply
    the recipe's scale and colour normalisation the same way, or training and scoring disagree."""
    from aml_model.architecture import INPUT_NORMALISATION_LAYERS
    from aml_model.io import load_model
    from aml_model.predict import predict_batch
    from aml_model.preprocess import normalise_for_resnet50
    from tasks.features import FeatureCache
    from tasks.store import Store
    from tasks.training import load_cells

    store = tmp_path / "store"
    result = run_retrain(
        task_runner, sources=list(two_labs), store=str(store), recipe="robust", epochs=2
    )
    card = json.loads((store / "models" / result["version"] / "model_card.json").read_text())
    model = load_model(store / "models" / result["version"] / "model.keras", compile=False)
    assert [layer.name for layer in model.layers[1:3]] == list(INPUT_NORMALISATION_LAYERS)

    predictions = pd.read_parquet(store / "models" / result["version"] / "test_predictions.parquet")
    images = load_cells(predictions, Store(str(store)))
    np.testing.assert_allclose(predict_batch(model, images), predictions["probability"], atol=1e-5)

    cache = FeatureCache(Store(str(store)), card["backbone"]["id"])
    index = cache.read_index()
    # Training and validation cells are cached as they are (view 0): compare a few of one run's
    # with what the model's own layers compute from the same stored cells.
    run = next(path for path in (store / "runs").iterdir() if (path / "cells.parquet").exists())
    cells = pd.read_parquet(run / "cells.parquet").assign(cells_zarr=str(run / "cells.zarr"))
    known = cells.merge(index[index["view"] == 0], on="sha256").head(6)
    assert len(known) == 6
    zarr_cells = load_cells(known, Store(str(store)))
    x = normalise_for_resnet50(zarr_cells.astype("float32"))
    for name in INPUT_NORMALISATION_LAYERS:
        x = model.get_layer(name)(x)
    expected = np.asarray(model.get_layer("resnet50")(x, training=False))
    cached = cache.read_rows(known["row"].to_numpy()).astype(np.float32)
    np.testing.assert_allclose(cached, expected, rtol=0.02, atol=0.02 * np.abs(expected).max())


def test_a_model_that_can_only_be_constant_is_never_registered(tmp_path, task_runner):
    # Identical flat cells (distinct files only by a text chunk) carry no information: any head
    # on them is a constant predictor.
    source = tmp_path / "flat"
    for folder, count in (("MYO", 30), ("NGS", 30)):
        (source / folder).mkdir(parents=True)
        for i in range(count):
            info = PngInfo()
            info.add_text("cell", f"{folder}-{i}")
            Image.new("RGB", (48, 48), (200, 180, 190)).save(
                source / folder / f"{folder}_{i}.png", pnginfo=info
            )
    store = tmp_path / "store"
    with pytest.raises(
        TrainingCollapsedError, match="collapsed to a constant predictor in all 3 initialisations"
    ):
        run_retrain(task_runner, sources=[str(source)], store=str(store), epochs=2)
    models = store / "models"
    assert not models.exists() or not [p for p in models.iterdir() if p.is_dir()]
    assert not (models / "champion.json").exists()
