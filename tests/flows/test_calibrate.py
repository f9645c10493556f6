import json

import numpy as np
import pandas as pd
import pytest
from prefect.artifacts import Artifact

from aml_model.calibration import fit_site_calibration
from aml_model.evaluate import compute_metrics
from aml_model.io import load_model
from aml_model.predict import predict_batch
from flows.calibrate import calibrate_site
from tasks.calibration import list_sites, read_site_calibration
from tasks.registry import register_model, set_champion
from tasks.store import Store
from tests.corpus import compose_patient_cohort


def champion(store: Store, model_file) -> str:
    ref = register_model(str(model_file), {"config": {"model": {"image_size": 32}}}, store)
    set_champion(store, ref.version)
    return ref.version


def test_calibrate_site_records_the_calibration_next_to_the_champion(
    lmu_cells, tmp_path, task_runner, tiny_model_file
):
    store = str(tmp_path / "store")
    version = champion(Store(store), tiny_model_file)
    source = compose_patient_cohort(lmu_cells, tmp_path / "lab", {"P1": (7, 5), "P2": (5, 8)})
    labels = pd.read_csv(source / "labels.csv")
    unlabelled = labels[labels["label"] == "normal"].iloc[-1]["image"]
    labels[labels["image"] != unlabelled].to_csv(source / "labels.csv", index=False)

    result = calibrate_site.with_options(task_runner=task_runner)(
        source=str(source), store=store, site="lab-a"
    )

    path = tmp_path / "store" / "models" / version / "sites" / "lab-a.json"
    assert result["calibration"] == str(path) and result["model_version"] == version
    data = json.loads(path.read_text())
    assert (data["site"], data["model_version"], data["n_blast"], data["n_other"]) == (
        "lab-a",
        version,
        12,
        12,
    )
    assert data["source"] == str(source) and data["run_id"] == result["run_id"]
    assert list_sites(Store(store), version) == ["lab-a"]
    calibration = read_site_calibration(Store(store), "lab-a", version)
    assert calibration.slope > 0 and calibration.threshold == 0.5

    # The figures are those of the model's own probabilities of the 24 labelled cells.
    paths = Store(store).run(result["run_id"])
    cells = pd.read_parquet(paths.cells_table)
    assert len(cells) == 25 and cells["label"].isna().sum() == 1
    labelled = cells[cells["label"].notna()]
    images = paths.store.open_cells_array(paths.cells_zarr)[:][labelled["zarr_index"].to_numpy()]
    raw = predict_batch(load_model(tiny_model_file, compile=False), images)
    y = (labelled["label"] == "blast").to_numpy(int)
    expected = compute_metrics(y, raw, 0.5)
    assert data["before"]["tp"] == expected.tp and data["before"]["tn"] == expected.tn
    assert data["before"]["roc_auc"] == pytest.approx(expected.roc_auc, abs=1e-6)
    after = compute_metrics(y, calibration.apply(raw), 0.5)
    assert (data["after"]["tp"], data["after"]["tn"]) == (after.tp, after.tn)
    assert result["after"] == data["after"] and result["before"] == data["before"]

    # Both operating points, with the expected bias of the blast-like fraction at the 20% cut-off.
    assert data["blast_cutoff"] == result["blast_cutoff"] == 0.2
    assert set(data["operating_points"]) == {"fraction", "balanced"}
    assert result["operating_points"] == data["operating_points"]
    refit = fit_site_calibration(y, raw, "lab-a", version)
    for name, point in data["operating_points"].items():
        refitted = refit.operating_point(name)
        assert (
            point["threshold"],
            point["sensitivity"],
            point["false_positive_rate"],
        ) == pytest.approx(
            (refitted.threshold, refitted.sensitivity, refitted.false_positive_rate), abs=1e-4
        ), name
        assert point["bias_at_cutoff"] == pytest.approx(refitted.bias(0.2), abs=1e-4), name
    assert data["operating_points"]["fraction"]["bias_at_cutoff"] == pytest.approx(0, abs=1e-9)
    assert data["operating_points"]["balanced"]["metrics"] == data["after"]

    artifact = Artifact.get("site-calibration")
    assert artifact is not None and "Site calibration: lab-a" in artifact.data
    assert "12 blast and 12 other" in artifact.data and version in artifact.data
    assert (
        "## Operating points: the blast-like fraction of a patient with 20% blasts" in artifact.data
    )
    assert np.isfinite(result["raw_threshold"]) and 0 < result["raw_threshold"] < 1
