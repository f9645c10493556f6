import numpy as np
import pandas as pd
import pytest
from prefect.artifacts import Artifact

from aml_model.aggregate import PATIENT_COLUMNS, RESEARCH_NOTE
from aml_model.catalog import CELL_COLUMNS
from aml_model.io import load_model
from aml_model.predict import predict_batch
from flows.score import score_smears
from tasks import storage
from tasks.registry import ModelNotFoundError
from tasks.runs import require_complete
from tests.conftest import upload_folder
from tests.corpus import compose_patient_cohort

SCORED_COLUMNS = CELL_COLUMNS + ("probability", "predicted_label", "model_version")


def run_score(task_runner, **parameters):
    return score_smears.with_options(task_runner=task_runner)(**parameters)


@pytest.mark.reliability
def test_distributed_scores_equal_single_process_predict(lmu_cells, tmp_path, task_runner, tiny_model_file):
    source = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (12, 8), "B": (3, 17), "C": (20, 0)})
    (source / "C" / "broken.png").write_bytes(b"<html>")
    store = str(tmp_path / "store")
    result = run_score(task_runner, source=str(source), store=store, model=str(tiny_model_file),
                       min_cells=10, chunk_cells=8, chunks_per_task=1, batch_size=5)
    paths = storage.RunPaths(store, result["run_id"])
    require_complete(paths)
    cells = pd.read_parquet(paths.cells_table)
    assert tuple(cells.columns) == SCORED_COLUMNS
    assert len(cells) == 60 and cells["cell_id"].is_unique and cells["probability"].notna().all()
    markers = sorted((tmp_path / "store" / "runs" / result["run_id"] / "_shards" / "score").iterdir())
    assert len(markers) == 8  # 61 inputs in chunks of 8
    assert sum(storage.read_json(str(m))["scored"] for m in markers) == 60, "every cell scored exactly once"
    images = storage.open_cells_array(paths.cells_zarr)[:]
    reference = predict_batch(load_model(tiny_model_file, compile=False), images[cells["zarr_index"].to_numpy()])
    np.testing.assert_allclose(cells["probability"].to_numpy(), reference, atol=1e-5)
    assert (cells["predicted_label"] == np.where(reference >= 0.5, "blast", "normal")).all()
    assert (cells["model_version"] == result["model_version"]).all()

    patients = pd.read_parquet(paths.patients_table)
    assert tuple(patients.columns) == PATIENT_COLUMNS
    assert patients["patient_id"].tolist() == ["A", "B", "C"]
    c = patients.set_index("patient_id").loc["C"]
    assert (c.n_cells, c.n_scored, c.n_quarantined) == (21, 20, 1)
    assert (patients["note"] == RESEARCH_NOTE).all() and (patients["threshold"] == 0.5).all()

    table = Artifact.get("patient-calls")
    assert table is not None and table.type == "table" and '"patient_id": "A"' in table.data.replace("'", '"')
    overview = Artifact.get("cohort-overview")
    assert overview is not None and RESEARCH_NOTE in overview.data and "| A |" in overview.data
    assert float(Artifact.get("score-progress").data) == 100.0

    again = run_score(task_runner, source=str(source), store=store, model=str(tiny_model_file),
                      min_cells=10, chunk_cells=8, chunks_per_task=1, batch_size=5)
    assert again["already_complete"] and again["run_id"] == result["run_id"]
    pd.testing.assert_frame_equal(pd.read_parquet(paths.cells_table), cells)


def test_s3_source_to_s3_store_with_a_registered_champion(lmu_cells, tmp_path, s3_bucket, s3_endpoint, task_runner,
                                                           tiny_model_file):
    from tasks.registry import register_model, set_champion

    bucket, options = s3_bucket
    store = f"s3://{bucket}/store"
    ref = register_model(str(tiny_model_file), {"config": {"model": {"image_size": 32}}}, store, options)
    set_champion(store, ref.version, options)
    local = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"P1": (4, 4), "P2": (0, 6)})
    upload_folder(local, f"s3://{bucket}/smears", options)
    result = run_score(task_runner, source=f"s3://{bucket}/smears", store=store, s3_endpoint_url=s3_endpoint,
                       min_cells=5, chunk_cells=4)
    assert result["model_version"] == ref.version
    paths = storage.RunPaths(store, result["run_id"])
    require_complete(paths, options)
    cells = storage.read_table(paths.cells_table, options)
    assert len(cells) == 14 and cells["probability"].between(0, 1).all()
    patients = storage.read_table(paths.patients_table, options)
    assert patients["patient_id"].tolist() == ["P1", "P2"] and patients["n_scored"].tolist() == [8, 6]


def test_missing_model_is_a_clear_error(tmp_path, task_runner):
    with pytest.raises(ModelNotFoundError, match="no champion model"):
        run_score(task_runner, source=str(tmp_path), store=str(tmp_path / "store"))


def test_resuming_with_other_chunks_per_task_scores_every_cell(lmu_cells, tmp_path, task_runner, tiny_model_file):
    """Score shards are numbered by position: a rerun that groups chunks differently must not take
    an old shard's marker for its own and leave cells unscored."""
    source = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (6, 6), "B": (6, 6)})
    store = str(tmp_path / "store")
    params = dict(source=str(source), store=store, model=str(tiny_model_file), run_id="regroup", min_cells=5,
                  chunk_cells=4, batch_size=4, explain=False)
    first = run_score(task_runner, chunks_per_task=1, **params)
    paths = storage.RunPaths(store, "regroup")
    complete = pd.read_parquet(paths.cells_table)
    # Interrupted before the second chunk was scored: its probabilities and marker are gone.
    storage.open_cells_array(paths.cells_zarr, name=storage.PROBABILITIES, read_only=False)[4:8] = np.nan
    storage.remove(paths.shard_marker("score", 1))
    storage.remove(paths.success)

    again = run_score(task_runner, chunks_per_task=2, **params)
    assert not again["already_complete"] and again["cells"] == first["cells"] == 24
    require_complete(paths)
    pd.testing.assert_frame_equal(pd.read_parquet(paths.cells_table), complete)
