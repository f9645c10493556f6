import csv
import json

import numpy as np
import pandas as pd
import pytest
from prefect.artifacts import Artifact

from aml_model.io import load_model
from aml_model.predict import predict_batch
from flows.parameters import RetrainOptions, nest_options
from flows.retrain import retrain_and_evaluate
from tasks.events import MODEL_PROMOTED
from tasks.store import Store
from tasks.training import load_cells
from tests.corpus import compose_patient_cohort
from tests.flows.prefect_events import read_events

FIGURES = ("learning_curves.png", "confusion_matrix.png", "roc_curve.png", "f1_curve.png")


def run_retrain(task_runner, **parameters):
    defaults = dict(epochs=8, patience=3, backbone_weights="none", image_size=64, augment_views=1)
    return retrain_and_evaluate.with_options(task_runner=task_runner)(
        **nest_options({**defaults, **parameters}, RetrainOptions)
    )


@pytest.fixture(scope="module")
def cohort(lmu_cells, tmp_path_factory):
    """Twelve patients of real cells, half of them mostly blasts: enough for a split by patient."""
    plan = {f"P{i:02d}": ((14, 6) if i % 2 else (3, 17)) for i in range(12)}
    return compose_patient_cohort(lmu_cells, tmp_path_factory.mktemp("cohort") / "cohort", plan)


def test_retrain_registers_promotes_and_reuses_the_feature_cache(cohort, tmp_path, task_runner):
    store = str(tmp_path / "store")
    first = run_retrain(task_runner, sources=[str(cohort)], store=store)
    assert first["promoted"] and first["reason"].startswith("no champion yet")
    assert first["embedded"] > 0
    folder = tmp_path / "store" / "models" / first["version"]
    for name in ("model.keras", "model_card.json", "test_predictions.parquet", *FIGURES):
        assert (folder / name).stat().st_size > 0, name
    assert (
        json.loads((tmp_path / "store" / "models" / "champion.json").read_text())["version"]
        == first["version"]
    )
    card = json.loads((folder / "model_card.json").read_text())
    assert card["split"]["by"] == "patient" and card["split"]["seed"] == 0
    patients = card["split"]["patients"]
    assert set(patients["train"]).isdisjoint(patients["val"]) and set(patients["train"]).isdisjoint(
        patients["test"]
    )
    assert set(patients["val"]).isdisjoint(patients["test"])
    assert sum(card["split"]["sizes"].values()) == 240
    assert card["backbone"]["id"].startswith("resnet50-64px-") and card["data"]["n_labelled"] == 240
    assert card["parent"] is None and card["promotion"]["promoted"] is True
    assert (
        Artifact.get("retrain-metrics") is not None and Artifact.get("retrain-report") is not None
    )
    embedding = Artifact.get("embed-progress")
    assert (
        float(embedding.data) == 100.0
        and embedding.description == f"embedding {first['embedded']} feature rows"
    )
    [promoted] = read_events(MODEL_PROMOTED, resource_id=f"aml-smear.model.{first['version']}")
    assert promoted.payload == {
        "version": first["version"],
        "previous": None,
        "reason": first["reason"],
        "store": store,
        "by": "retrain",
    }

    # The card's metrics are those of the stored test predictions, recomputed here by hand.
    predictions = pd.read_parquet(folder / "test_predictions.parquet")
    assert len(predictions) == card["split"]["sizes"]["test"] == card["metrics"]["n"]
    blast = (predictions["label"] == "blast").to_numpy()
    p = predictions["probability"].to_numpy()
    called = p >= card["metrics"]["threshold"]
    assert [card["metrics"][k] for k in ("tp", "fn", "fp", "tn")] == [
        int((called & blast).sum()),
        int((~called & blast).sum()),
        int((called & ~blast).sum()),
        int((~called & ~blast).sum()),
    ]
    above = (
        p[blast][:, None] - p[~blast][None, :]
    )  # every (blast, normal) pair: blast ranked higher?
    assert card["metrics"]["roc_auc"] == pytest.approx(
        ((above > 0) + 0.5 * (above == 0)).mean(), abs=1e-9
    )
    assert first["metrics"] == card["metrics"]
    # The reduced precisions' agreement with float32, for precision="auto": taken over every
    # labelled cell here, so at least what the registered model gives on its test cells alone;
    # the registry hands it to the scoring workers.
    from aml_model.precision import precision_agreement
    from tasks.registry import resolve_model

    recorded = card["inference"]["max_abs_dp_vs_float32"]
    # The reduced precisions are checked on every labelled cell here (fewer than AGREEMENT_CELLS).
    assert card["inference"]["cells"] == 240 and card["inference"]["guard"] == 0.05
    recomputed = precision_agreement(
        load_model(folder / "model.keras", compile=False), load_cells(predictions, Store(store))
    )
    assert set(recorded) == set(recomputed) and recorded["bfloat16"] > 0
    assert all(recorded[name] >= recomputed[name] - 1e-6 for name in recomputed)
    assert resolve_model("champion", Store(store)).precision_agreement == recorded

    # The registered model scores exactly as the in-memory one did.
    loaded = load_model(folder / "model.keras", compile=False)
    np.testing.assert_allclose(
        predict_batch(loaded, load_cells(predictions, Store(store))),
        predictions["probability"],
        atol=1e-5,
    )

    second = run_retrain(task_runner, sources=[str(cohort)], store=store)
    assert second["embedded"] == 0, "nothing new: no image is embedded again"
    assert second["version"] != first["version"]
    second_predictions = pd.read_parquet(
        tmp_path / "store" / "models" / second["version"] / "test_predictions.parquet"
    )
    np.testing.assert_allclose(
        second_predictions["probability"],
        predictions["probability"],
        atol=1e-6,
        err_msg="the same seed and data train the same model",
    )


def test_a_worse_challenger_is_not_promoted(cohort, tmp_path, task_runner):
    store = str(tmp_path / "store")
    champion = run_retrain(task_runner, sources=[str(cohort)], store=store)
    assert champion["promoted"]
    # The same images with a third of their labels flipped: the challenger learns a worse model
    # (all of them shuffled would learn nothing, and a collapsed model is never registered).
    shuffled = tmp_path / "shuffled"
    for path in cohort.rglob("*.jpg"):
        target = shuffled / path.relative_to(cohort)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    with open(cohort / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    flip = np.random.default_rng(1).random(len(rows)) < 1 / 3
    labels = [
        ({"blast": "normal", "normal": "blast"}[r["label"]] if f else r["label"])
        for r, f in zip(rows, flip, strict=True)
    ]
    with open(shuffled / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label"])
        writer.writerows(zip([r["image"] for r in rows], labels, strict=True))
    challenger = run_retrain(task_runner, sources=[str(shuffled)], store=store)
    assert not challenger["promoted"]
    assert challenger["reason"].startswith("kept as a candidate")
    assert (
        json.loads((tmp_path / "store" / "models" / "champion.json").read_text())["version"]
        == champion["version"]
    )
    card = Store(store).read_json(
        str(tmp_path / "store" / "models" / challenger["version"] / "model_card.json")
    )
    assert card["parent"] == champion["version"]
    assert "champion's test cells" in card["promotion"]["comparisons"]


def test_cached_and_plain_paths_build_the_same_architecture(cohort, tmp_path, task_runner):
    store = str(tmp_path / "store")
    cached = run_retrain(task_runner, sources=[str(cohort)], store=store, epochs=2)
    plain = run_retrain(
        task_runner, sources=[str(cohort)], store=store, epochs=2, training_path="plain"
    )
    a = load_model(cached["model"], compile=False)
    b = load_model(plain["model"], compile=False)
    assert [(x.name, type(x).__name__) for x in a.layers] == [
        (x.name, type(x).__name__) for x in b.layers
    ]
    assert [w.shape for w in a.weights] == [w.shape for w in b.weights]
    assert plain["embedded"] == 0


def test_the_cells_to_review_artifact_of_a_pseudonymised_retrain_names_no_patient(
    tmp_path, monkeypatch
):
    from tasks.privacy import PATIENT_ID_KEY_ENV, prefect_patient_id
    from tasks.registry import ModelRef
    from tasks.retrain_report import publish_retrain_report

    monkeypatch.setenv(PATIENT_ID_KEY_ENV, "a key of the lab's")
    patients = ["Mueller-1970-03-01", "Schmidt-1962-11-30"]
    review = [
        {
            "cell_id": f"{patient}:0123456789abcdef",
            "source": "/data/batch-7",
            "cell_type": None,
            "label": "blast",
            "source_uri": f"/data/batch-7/{patient}/{patient}-cell-12.jpg",
            "probability": 0.02,
        }
        for patient in patients
    ]
    review[1]["source_uri"] = (
        f"/data/batch-7/patient-{patients[1]}/cell-12.jpg"  # the id inside a folder name
    )
    metrics = {"roc_auc": 0.9, "accuracy": 0.9, "sensitivity": 0.9, "specificity": 0.9, "f1": 0.9}
    card = {
        "metrics": metrics,
        "promotion": {"promoted": False, "reason": "worse", "comparisons": {}},
        "evaluation": {"by_source_and_type": [], "to_review": review},
    }
    publish_retrain_report(
        ModelRef("/store/models/v-1/model.keras", "v-1", 32), card, Store(str(tmp_path))
    )
    published = Artifact.get("retrain-cells-to-review").data
    assert not any(patient in published for patient in patients), published
    assert f"/data/batch-7/{prefect_patient_id(patients[0])}/" in published
    assert f"/data/batch-7/patient-{prefect_patient_id(patients[1])}/" in published
    for patient in patients:
        assert f"{prefect_patient_id(patient)}:0123456789abcdef" in published
    assert review[0]["cell_id"].startswith(patients[0]), "the card in the store keeps the real ids"
