import json
import zipfile

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from prefect.artifacts import Artifact

from aml_model.aggregate import PATIENT_COLUMNS, RESEARCH_NOTE
from aml_model.catalog import CELL_COLUMNS
from aml_model.io import load_model
from aml_model.predict import predict_batch
from app.cli import cli
from flows.parameters import ScoreOptions, nest_options
from flows.score import score_smears
from tasks.registry import ModelNotFoundError
from tasks.report import report_url
from tasks.runs import require_complete
from tasks.store import PROBABILITIES, Store
from tasks.store_layout import ScoringPaths
from tests.conftest import upload_folder
from tests.corpus import compose_class_source, compose_patient_cohort
from tests.report_checks import parse_page

SCORED_COLUMNS = CELL_COLUMNS + ("probability", "predicted_label", "model_version")


def run_score(task_runner, **parameters):
    return score_smears.with_options(task_runner=task_runner)(
        **nest_options(parameters, ScoreOptions)
    )


def scoring_of(store: Store, result: dict) -> ScoringPaths:
    return store.run(result["run_id"]).scoring(result["score_id"])


@pytest.mark.reliability
def test_distributed_scores_equal_single_process_predict(
    lmu_cells, tmp_path, task_runner, tiny_model_file
):
    source = compose_patient_cohort(
        lmu_cells, tmp_path / "cohort", {"A": (12, 8), "B": (3, 17), "C": (20, 0)}
    )
    (source / "C" / "broken.png").write_bytes(b"<html>")
    store = str(tmp_path / "store")
    result = run_score(
        task_runner,
        source=str(source),
        store=store,
        model=str(tiny_model_file),
        min_cells=10,
        chunk_cells=8,
        chunks_per_task=1,
        batch_size=5,
    )
    paths = scoring_of(Store(store), result)
    require_complete(paths)
    require_complete(paths.ingest)
    assert result["run"] == paths.root and result["ingest"] == paths.ingest.root
    cells = pd.read_parquet(paths.cells_table)
    assert tuple(cells.columns) == SCORED_COLUMNS
    assert len(cells) == 60 and cells["cell_id"].is_unique and cells["probability"].notna().all()
    markers = sorted(
        (
            tmp_path
            / "store"
            / "runs"
            / result["run_id"]
            / "scores"
            / result["score_id"]
            / "_shards"
            / "score"
        ).iterdir()
    )
    assert len(markers) == 8  # 61 inputs in chunks of 8
    assert sum(paths.store.read_json(str(m))["scored"] for m in markers) == 60, (
        "every cell scored exactly once"
    )
    images = paths.store.open_cells_array(paths.cells_zarr)[:]
    reference = predict_batch(
        load_model(tiny_model_file, compile=False), images[cells["zarr_index"].to_numpy()]
    )
    np.testing.assert_allclose(cells["probability"].to_numpy(), reference, atol=1e-5)
    assert (cells["predicted_label"] == np.where(reference >= 0.5, "blast", "normal")).all()
    assert (cells["model_version"] == result["model_version"]).all()

    patients = pd.read_parquet(paths.patients_table)
    assert tuple(patients.columns) == (*PATIENT_COLUMNS, "patient_version")
    assert patients["patient_id"].tolist() == ["A", "B", "C"]
    assert (
        patients["patient_version"].str.fullmatch("[0-9a-f]{64}").all()
        and patients["patient_version"].is_unique
    )
    c = patients.set_index("patient_id").loc["C"]
    assert (c.n_cells, c.n_scored, c.n_quarantined) == (21, 20, 1)
    assert (patients["note"] == RESEARCH_NOTE).all() and (patients["threshold"] == 0.5).all()

    table = Artifact.get("patient-calls")
    assert (
        table is not None
        and table.type == "table"
        and '"patient_id": "A"' in table.data.replace("'", '"')
    )
    overview = Artifact.get("cohort-overview")
    assert overview is not None and RESEARCH_NOTE in overview.data and "| A |" in overview.data
    assert float(Artifact.get("score-progress").data) == 100.0

    again = run_score(
        task_runner,
        source=str(source),
        store=store,
        model=str(tiny_model_file),
        min_cells=10,
        chunk_cells=8,
        chunks_per_task=1,
        batch_size=5,
    )
    assert again["already_complete"] and (again["run_id"], again["score_id"]) == (
        result["run_id"],
        result["score_id"],
    )
    pd.testing.assert_frame_equal(pd.read_parquet(paths.cells_table), cells)


def test_s3_source_to_s3_store_with_a_registered_champion(
    lmu_cells, tmp_path, s3_bucket, s3_endpoint, task_runner, tiny_model_file
):
    from tasks.registry import register_model, set_champion

    bucket, options = s3_bucket
    store = f"s3://{bucket}/store"
    ref = register_model(
        str(tiny_model_file), {"config": {"model": {"image_size": 32}}}, Store(store, options)
    )
    set_champion(Store(store, options), ref.version)
    local = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"P1": (4, 4), "P2": (0, 6)})
    upload_folder(local, Store(f"s3://{bucket}/smears", options))
    result = run_score(
        task_runner,
        source=f"s3://{bucket}/smears",
        store=store,
        s3_endpoint_url=s3_endpoint,
        min_cells=5,
        chunk_cells=4,
    )
    assert result["model_version"] == ref.version and result["score_id"].startswith(ref.version)
    paths = scoring_of(Store(store, options), result)
    require_complete(paths)
    cells = paths.store.read_table(paths.cells_table)
    assert len(cells) == 14
    # The scores are the model's own on these cells, read back from the store's Zarr images.
    images = paths.store.open_cells_array(paths.cells_zarr)[:][cells["zarr_index"].to_numpy()]
    reference = predict_batch(load_model(tiny_model_file, compile=False), images)
    np.testing.assert_allclose(cells["probability"].to_numpy(), reference, atol=1e-5)
    assert (cells["predicted_label"] == np.where(reference >= 0.5, "blast", "normal")).all()
    patients = paths.store.read_table(paths.patients_table)
    assert patients["patient_id"].tolist() == ["P1", "P2"] and patients["n_scored"].tolist() == [
        8,
        6,
    ]
    # The index's patient links are relative: on S3 it says where they open.
    index = parse_page(paths.store.read_bytes(paths.report_index).decode()).text
    assert "Opened from a presigned link of a private bucket they do not open" in index


def test_missing_model_is_a_clear_error(tmp_path, task_runner):
    with pytest.raises(ModelNotFoundError, match="no champion model"):
        run_score(task_runner, source=str(tmp_path), store=str(tmp_path / "store"))


def test_resuming_with_other_chunks_per_task_scores_every_cell(
    lmu_cells, tmp_path, task_runner, tiny_model_file
):
    """Score shards are numbered by position: a rerun that groups chunks differently must not take
    an old shard's marker for its own and leave cells unscored."""
    source = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (6, 6), "B": (6, 6)})
    store = str(tmp_path / "store")
    params = dict(
        source=str(source),
        store=store,
        model=str(tiny_model_file),
        run_id="regroup",
        min_cells=5,
        chunk_cells=4,
        batch_size=4,
        explain=False,
    )
    first = run_score(task_runner, chunks_per_task=1, **params)
    paths = scoring_of(Store(store), first)
    complete = pd.read_parquet(paths.cells_table)
    # Interrupted before the second chunk was scored: its probabilities and marker are gone.
    paths.store.open_cells_array(paths.probabilities_zarr, name=PROBABILITIES, read_only=False)[
        4:8
    ] = np.nan
    paths.store.remove(paths.shard_marker("score", 1))
    paths.store.remove(paths.success)

    again = run_score(task_runner, chunks_per_task=2, **params)
    assert not again["already_complete"] and again["cells"] == first["cells"] == 24
    require_complete(paths)
    pd.testing.assert_frame_equal(pd.read_parquet(paths.cells_table), complete)


def test_class_layout_run_reports_blast_like_rates_per_cell_type(
    lmu_cells, tmp_path, task_runner, tiny_model_file
):
    source = compose_class_source(
        lmu_cells, tmp_path / "smear", {"MYO": ("MYO", 6), "NGS": ("NGS", 5), "blast": ("MYO", 3)}
    )
    store = str(tmp_path / "store")
    result = run_score(
        task_runner,
        source=str(source),
        store=store,
        model=str(tiny_model_file),
        min_cells=5,
        chunk_cells=8,
        explain=False,
    )
    paths = scoring_of(Store(store), result)
    cells = pd.read_parquet(paths.cells_table)
    assert tuple(cells.columns) == SCORED_COLUMNS
    types = cells["cell_type"].astype(object).where(cells["cell_type"].notna(), "unknown")
    assert types.value_counts().to_dict() == {
        "myeloblast": 6,
        "segmented neutrophil": 5,
        "unknown": 3,
    }
    expected = {
        t: (int((types == t).sum()), float((cells.loc[types == t, "probability"] >= 0.5).mean()))
        for t in ("myeloblast", "segmented neutrophil", "unknown")
    }

    artifact = Artifact.get("per-type-rates")
    assert artifact is not None and artifact.type == "table"
    rows = {row["cell_type"]: row for row in json.loads(artifact.data)}
    assert sorted(rows) == sorted(expected)
    for cell_type, (n, rate) in expected.items():
        assert rows[cell_type]["n"] == n and rows[cell_type]["blast_like_rate"] == pytest.approx(
            rate
        )
    assert rows["myeloblast"]["n_blast"] == 6 and rows["segmented neutrophil"]["n_blast"] == 0

    report = parse_page(paths.store.read_bytes(report_url(paths, "smear")).decode()).text
    index = parse_page(paths.store.read_bytes(result["report"]).decode()).text
    for cell_type, (n, rate) in expected.items():
        assert f"{cell_type} {n} {rate:.1%}" in report, cell_type
        assert f"{cell_type} {n} {rate:.1%}" in index, cell_type


def _site_store(tmp_path, model_file):
    """A store whose champion is the tiny model, and labelled-site scores to fit a calibration with."""
    from scipy.special import expit

    from tasks.registry import register_model, set_champion

    store = str(tmp_path / "store")
    ref = register_model(str(model_file), {"config": {"model": {"image_size": 32}}}, Store(store))
    set_champion(Store(store), ref.version)
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(30), np.zeros(30)].astype(int)
    return store, ref, y, expit(np.where(y == 1, 1.0, -1.0) + rng.normal(size=y.size))


def test_scoring_with_a_site_calls_on_its_calibrated_probabilities_and_records_it(
    lmu_cells, tmp_path, task_runner, tiny_model_file
):
    import dataclasses

    from aml_model.aggregate import CORRECTED_COLUMNS, rogan_gladen
    from aml_model.calibration import CALIBRATED_COLUMN, fit_site_calibration
    from tasks.calibration import save_site_calibration

    store, ref, y, p = _site_store(tmp_path, tiny_model_file)
    # A site whose raw cut sits at sigmoid(-12): nearly every cell the raw 0.5 calls normal turns blast-like.
    calibration = dataclasses.replace(
        fit_site_calibration(y, p, "lab-a", ref.version),
        coefficients={"slope": 1.0, "intercept": 12.0},
    )
    save_site_calibration(calibration, Store(store))
    source = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (3, 9), "B": (0, 12)})
    result = run_score(
        task_runner,
        source=str(source),
        store=store,
        site="lab-a",
        min_cells=5,
        chunk_cells=8,
        explain=False,
    )
    assert result["site"] == "lab-a" and result["model_version"] == ref.version
    assert result["site_operating_point"] == "fraction", "the fraction point calls by default"
    point = calibration.operating_point("fraction")
    assert point.threshold > calibration.threshold
    paths = scoring_of(Store(store), result)
    require_complete(paths)
    settings = paths.store.read_json(paths.settings)
    assert settings["site"] == "lab-a" and settings["threshold"] == point.threshold
    assert settings["site_operating_point"] == "fraction"
    assert settings["calibration"]["coefficients"] == {"slope": 1.0, "intercept": 12.0}

    cells = pd.read_parquet(paths.cells_table)
    assert tuple(cells.columns) == (*SCORED_COLUMNS, CALIBRATED_COLUMN)
    np.testing.assert_allclose(
        cells[CALIBRATED_COLUMN], calibration.apply(cells["probability"]), rtol=1e-5
    )
    # The tiny model is weak: how many cells its raw 0.5 calls normal varies with its training.
    assert (cells["probability"] < 0.5).sum() >= 1, "the raw scale calls some cells normal"
    called = cells[CALIBRATED_COLUMN] >= point.threshold
    assert (cells["predicted_label"] == np.where(called, "blast", "normal")).all()
    patients = pd.read_parquet(paths.patients_table).set_index("patient_id")
    # The blast fraction corrected for the site's rates at the fraction point, with its interval.
    assert tuple(patients.columns)[-4:] == (*CORRECTED_COLUMNS, "patient_version")
    for corrected, observed in zip(
        CORRECTED_COLUMNS, ("blast_fraction", "ci_low", "ci_high"), strict=True
    ):
        np.testing.assert_allclose(
            patients[corrected],
            rogan_gladen(patients[observed], point.sensitivity, point.false_positive_rate),
        )
    assert {
        row["patient_id"]: row["blast_fraction_corrected"] for row in result["patients"]
    } == patients["blast_fraction_corrected"].to_dict()
    assert patients["n_blast_like"].to_dict() == called.groupby(cells["patient_id"]).sum().to_dict()
    assert patients["n_blast_like"].sum() > (cells["probability"] >= 0.5).sum()
    np.testing.assert_allclose(
        patients["mean_probability"],
        cells.groupby("patient_id")[CALIBRATED_COLUMN].mean().loc[patients.index],
        rtol=1e-5,
    )


def test_a_site_calibrated_for_another_model_version_is_refused_before_anything_is_written(
    lmu_cells, tmp_path, task_runner, tiny_model_file
):
    import shutil

    from aml_model.calibration import fit_site_calibration
    from aml_model.errors import ConfigError
    from tasks.calibration import (
        CalibrationNotFoundError,
        save_site_calibration,
        site_calibration_url,
    )
    from tasks.registry import set_champion

    store, ref, y, p = _site_store(tmp_path, tiny_model_file)
    save_site_calibration(fit_site_calibration(y, p, "lab-a", ref.version), Store(store))
    # A newer champion, promoted after the site calibrated.
    new = "20991231T000000Z-feedbeef"
    shutil.copytree(
        tmp_path / "store" / "models" / ref.version,
        tmp_path / "store" / "models" / new,
        ignore=shutil.ignore_patterns("sites"),
    )
    card = tmp_path / "store" / "models" / new / "model_card.json"
    card.write_text(json.dumps({**json.loads(card.read_text()), "version": new}))
    set_champion(Store(store), new)
    source = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (2, 2)})

    def files():
        return sorted(
            (p.relative_to(tmp_path / "store"), p.stat().st_mtime_ns)
            for p in (tmp_path / "store").rglob("*")
        )

    before = files()
    with pytest.raises(
        CalibrationNotFoundError,
        match=rf"site lab-a has no calibration for model {new} \(it was calibrated for model "
        rf"{ref.version}\); run `aml-smear calibrate .* --site lab-a` again",
    ):
        run_score(task_runner, source=str(source), store=store, site="lab-a", min_cells=1)
    assert files() == before
    with pytest.raises(ValueError, match="the site's calibration sets the threshold"):
        run_score(
            task_runner,
            source=str(source),
            store=store,
            model=ref.version,
            site="lab-a",
            threshold=0.7,
            min_cells=1,
        )
    with pytest.raises(ConfigError, match="unbiased at a blast cut-off of 0.2, not 0.3"):
        run_score(
            task_runner,
            source=str(source),
            store=store,
            model=ref.version,
            site="lab-a",
            blast_cutoff=0.3,
            min_cells=1,
        )
    # A calibration stored before the operating points: the fraction point (the default) is refused.
    url = site_calibration_url(Store(store), ref.version, "lab-a")
    Store(store).write_json(
        url,
        {
            k: v
            for k, v in Store(store).read_json(url).items()
            if k not in {"operating_points", "blast_cutoff"}
        },
    )
    before = files()
    with pytest.raises(ConfigError, match="has no fraction operating point"):
        run_score(
            task_runner,
            source=str(source),
            store=store,
            model=ref.version,
            site="lab-a",
            min_cells=1,
        )
    assert files() == before and not (tmp_path / "store" / "runs").exists()


def test_a_flat_folder_is_scored_as_one_pseudo_patient_named_after_it(
    lmu_cells, tmp_path, task_runner, tiny_model_file, caplog
):
    source = (
        compose_class_source(lmu_cells, tmp_path / "cells", {"smear-17": ("MYO", 6)}) / "smear-17"
    )
    store = str(tmp_path / "store")
    result = run_score(
        task_runner,
        source=str(source),
        store=store,
        model=str(tiny_model_file),
        min_cells=5,
        chunk_cells=4,
    )
    assert [(p["patient_id"], p["n_scored"]) for p in result["patients"]] == [("smear-17", 6)]
    require_complete(scoring_of(Store(store), result))
    assert "flat folder: its images are scored as one pseudo-patient 'smear-17'" in caplog.text


def test_symlinked_patient_folders_are_scored(lmu_cells, tmp_path, task_runner, tiny_model_file):
    archive = compose_patient_cohort(
        lmu_cells, tmp_path / "archive", {"P1": (3, 3), "P2": (0, 5), "P3": (1, 1)}
    )
    batch = tmp_path / "batch"
    batch.mkdir()
    for patient in ("P1", "P2"):  # a batch assembled from links into the archive
        (batch / patient).symlink_to(archive / patient)
    store = str(tmp_path / "store")
    result = run_score(
        task_runner,
        source=str(batch),
        store=store,
        model=str(tiny_model_file),
        min_cells=5,
        chunk_cells=4,
    )
    assert [(p["patient_id"], p["n_scored"]) for p in result["patients"]] == [("P1", 6), ("P2", 5)]


def test_a_failed_scoring_is_listed_as_failed_with_its_reason(
    lmu_cells, tmp_path, task_runner, tiny_model_file, monkeypatch
):
    # A model whose config reads but whose weights do not: it fails on the workers, after the cells are decoded.
    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(tiny_model_file) as original, zipfile.ZipFile(broken, "w") as copy:
        for name in original.namelist():
            copy.writestr(name, b"not HDF5" if name.endswith(".h5") else original.read(name))
    # Three shards, one in flight per worker thread: the third is submitted only after a first
    # one's scoring has failed, and must still be decoded for the ingest to complete.
    monkeypatch.setattr("flows.runner.SHARDS_PER_SLOT", 1)
    source = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"P1": (6, 6)})
    store = str(tmp_path / "store")
    with pytest.raises(Exception):  # noqa: B017 - whatever Keras raises; the record must say it
        run_score(
            task_runner,
            source=str(source),
            store=store,
            model=str(broken),
            min_cells=2,
            chunk_cells=4,
            chunks_per_task=1,
        )
    listed = CliRunner().invoke(cli, ["runs", "list", "--store", store])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert len(lines) == 2 and " complete, 12 cells" in lines[0], (
        "the cells were decoded: the ingest run completed"
    )
    assert lines[1].startswith("  scoring file-") and "  failed (" in lines[1], listed.output


def test_a_model_file_outside_the_allowed_prefixes_is_refused_before_any_worker_loads_it(
    lmu_cells, tmp_path, task_runner, tiny_model_file, monkeypatch
):
    import shutil

    source = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (3, 3)})
    elsewhere = tmp_path / "elsewhere" / "model.keras"
    elsewhere.parent.mkdir()
    shutil.copy(tiny_model_file, elsewhere)
    store = tmp_path / "store"
    monkeypatch.delenv("AML_SMEAR_MODEL_PREFIXES", raising=False)
    for model in (str(elsewhere), f"{store}/models/../../elsewhere/model.keras"):
        with pytest.raises(PermissionError, match="is not under an allowed prefix"):
            run_score(
                task_runner,
                source=str(source),
                store=str(store),
                model=model,
                min_cells=1,
                explain=False,
            )
        assert not (store / "runs").exists(), "refused before anything was written"

    monkeypatch.setenv("AML_SMEAR_MODEL_PREFIXES", f"s3://other/models,{elsewhere.parent}")
    allowed = run_score(
        task_runner,
        source=str(source),
        store=str(store),
        model=str(elsewhere),
        min_cells=1,
        explain=False,
    )
    assert allowed["model_version"].startswith("file-")
