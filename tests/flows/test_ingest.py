import shutil

import numpy as np
import pandas as pd
import pytest
import zarr
from click.testing import CliRunner
from prefect.artifacts import Artifact

from aml_model.catalog import CELL_COLUMNS, QUARANTINE_COLUMNS
from aml_model.config import PreprocessConfig
from aml_model.preprocess import decode_cell
from app.cli import cli
from flows.ingest import ingest
from tasks.discover import NoImagesError
from tasks.runs import IncompleteRunError, RunConflictError, require_complete
from tasks.store import Store
from tests.conftest import upload_folder
from tests.corpus import compose_class_source, compose_patient_cohort, write_bad_corpus


def run_ingest(task_runner, **parameters):
    return ingest.with_options(task_runner=task_runner)(**parameters)


def reference_stack(uris, source: Store | None = None, image_size=224):
    config = PreprocessConfig(image_size=image_size)
    return np.stack([decode_cell((source or Store(u)).read_bytes(u), u, config) for u in uris])


def test_real_lmu_cells_in_class_layout(lmu_cells, tmp_path, task_runner):
    store = str(tmp_path / "store")
    result = run_ingest(
        task_runner, source=str(lmu_cells), store=store, layout="class", run_id="lmu"
    )
    assert result["cells"] == 1400 and result["quarantined"] == 0 and result["layout"] == "class"
    paths = Store(store).run("lmu")
    require_complete(paths)
    cells = pd.read_parquet(paths.cells_table)
    assert tuple(cells.columns) == CELL_COLUMNS
    assert cells["label"].value_counts().to_dict() == {"blast": 700, "normal": 700}
    assert cells["cell_type"].value_counts().to_dict() == {
        "myeloblast": 700,
        "segmented neutrophil": 700,
    }
    assert cells["cell_id"].is_unique
    quarantine = pd.read_parquet(paths.quarantine_table)
    assert tuple(quarantine.columns) == QUARANTINE_COLUMNS and quarantine.empty
    images = zarr.open_group(paths.cells_zarr, mode="r")["images"]
    assert images.shape == (1400, 224, 224, 3) and images.dtype == np.uint8
    assert images.chunks == (64, 224, 224, 3)
    stored = images[:][cells["zarr_index"].to_numpy()]
    np.testing.assert_array_equal(stored, reference_stack(cells["source_uri"]))
    progress = Artifact.get("ingest-progress")
    assert progress is not None and progress.type == "progress" and float(progress.data) == 100.0
    summary = Artifact.get("ingest-summary")
    assert summary is not None and "| cells | 1400 |" in summary.data
    assert not (tmp_path / "store" / "_staging").exists(), "the listing is removed once decoded"


def test_patient_cohort_bad_inputs_are_quarantined_and_good_ones_kept(tmp_path, task_runner):
    outside = tmp_path / "outside"
    outside.mkdir()
    source = tmp_path / "src"
    expected = write_bad_corpus(source, outside)
    store = str(tmp_path / "store")
    result = run_ingest(
        task_runner, source=str(source), store=store, layout="auto", image_size=32, chunk_cells=4
    )
    assert result["layout"] == "patient"
    paths = Store(store).run(result["run_id"])
    cells = pd.read_parquet(paths.cells_table)
    quarantine = pd.read_parquet(paths.quarantine_table)
    kept = {uri.split("/src/")[1] for uri in cells["source_uri"]}
    assert kept == {name for name, e in expected.items() if e["kept"]}
    reasons = {
        uri.split("/src/")[1]: reason
        for uri, reason in zip(quarantine["source_uri"], quarantine["reason"], strict=True)
    }
    assert set(reasons) == {name for name, e in expected.items() if not e["kept"]}
    for name, reason in reasons.items():
        assert expected[name]["reason"] in reason, (name, reason)
    images = zarr.open_group(paths.cells_zarr, mode="r")["images"]
    np.testing.assert_array_equal(
        images[:][cells["zarr_index"].to_numpy()],
        reference_stack(cells["source_uri"], image_size=32),
    )
    report = paths.store.read_json(paths.report)
    assert report["empty_patients"] == ["P3-empty"]
    assert sorted(p.rsplit("/", 1)[-1] for p in report["ignored"]) == [
        ".DS_Store",
        "NOTES",
        "README.txt",
        "Thumbs.db",
    ]


def test_s3_source_into_s3_store(lmu_cells, tmp_path, s3_bucket, s3_endpoint, task_runner):
    bucket, options = s3_bucket
    local = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (3, 2), "B": (1, 4)})
    upload_folder(local, Store(f"s3://{bucket}/smears", options))
    store = f"s3://{bucket}/store"
    result = run_ingest(
        task_runner,
        source=f"s3://{bucket}/smears",
        store=store,
        run_id="s3run",
        s3_endpoint_url=s3_endpoint,
        chunk_cells=4,
    )
    assert result["cells"] == 10
    paths = Store(store, options).run("s3run")
    require_complete(paths)
    cells = paths.store.read_table(paths.cells_table)
    assert sorted(cells["patient_id"].value_counts().to_dict().items()) == [("A", 5), ("B", 5)]
    images = paths.store.open_cells_array(paths.cells_zarr)
    local_uris = [str(local / u.split("/smears/")[1]) for u in cells["source_uri"]]
    np.testing.assert_array_equal(
        images[:][cells["zarr_index"].to_numpy()], reference_stack(local_uris)
    )


def shard_mtimes(root):
    """The ingest shard markers' modification times, by name."""
    return {p.name: p.stat().st_mtime_ns for p in (root / "_shards" / "ingest").glob("*.json")}


@pytest.mark.reliability
def test_rerun_is_idempotent_and_an_interrupted_run_is_completed(lmu_cells, tmp_path, task_runner):
    source = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (6, 4), "B": (2, 8)})
    store = str(tmp_path / "store")
    params = dict(source=str(source), store=store, image_size=32, chunk_cells=4, chunks_per_task=1)
    first = run_ingest(task_runner, **params)
    paths = Store(store).run(first["run_id"])
    run_root = tmp_path / "store" / "runs" / first["run_id"]
    cells_first = pd.read_parquet(paths.cells_table)
    images_first = zarr.open_group(paths.cells_zarr, mode="r")["images"][:]
    before = shard_mtimes(run_root)

    again = run_ingest(task_runner, **params)
    assert again["already_complete"] and again["run_id"] == first["run_id"]
    assert shard_mtimes(run_root) == before, "a complete run is not redone"

    # Simulate a crash after some chunks: no tables, no _SUCCESS, two shard markers lost.
    for name in ("_SUCCESS", "quarantine.parquet"):
        (run_root / name).unlink()
    shutil.rmtree(run_root / "cells.parquet")
    lost = sorted(before)[:2]
    for name in lost:
        (run_root / "_shards" / "ingest" / name).unlink()
    with pytest.raises(IncompleteRunError, match="incomplete"):
        require_complete(paths)
    resumed = run_ingest(task_runner, **params)
    assert not resumed["already_complete"]
    after = shard_mtimes(run_root)
    assert {n for n in before if after[n] != before[n]} == set(lost), (
        "only the missing shards are redone"
    )
    pd.testing.assert_frame_equal(pd.read_parquet(paths.cells_table), cells_first)
    np.testing.assert_array_equal(
        zarr.open_group(paths.cells_zarr, mode="r")["images"][:], images_first
    )
    require_complete(paths)


def test_a_run_id_holding_other_inputs_is_refused(lmu_cells, tmp_path, task_runner):
    source = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (1, 1)})
    store = str(tmp_path / "store")
    run_ingest(task_runner, source=str(source), store=store, run_id="r1", image_size=32)
    (source / "A" / "extra.png").write_bytes((source / "A").glob("*.jpg").__next__().read_bytes())
    with pytest.raises(RunConflictError, match="different input list"):
        run_ingest(task_runner, source=str(source), store=store, run_id="r1", image_size=32)
    assert not (tmp_path / "store" / "_staging").exists(), "the refused run's listing is removed"


def test_cell_types_flow_from_class_folders_and_labels_csv_into_cells_parquet(
    lmu_cells, tmp_path, task_runner
):
    source = compose_class_source(
        lmu_cells, tmp_path / "smear", {"MYO": ("MYO", 3), "NGS": ("NGS", 2), "blast": ("MYO", 2)}
    )
    store = str(tmp_path / "store")
    result = run_ingest(task_runner, source=str(source), store=store, image_size=32, chunk_cells=4)
    assert result["layout"] == "class" and result["cells"] == 7
    cells = pd.read_parquet(Store(store).run(result["run_id"]).cells_table)
    expected = {"MYO": "myeloblast", "NGS": "segmented neutrophil", "blast": None}
    for uri, cell_type in zip(cells["source_uri"], cells["cell_type"], strict=True):
        want = expected[uri.split("/smear/")[1].split("/")[0]]
        assert (cell_type if pd.notna(cell_type) else None) == want, (uri, cell_type)
    assert cells["cell_type"].isna().sum() == 2 and cells["label"].tolist().count("blast") == 5

    # Patient layout: labels.csv names the types; retyping a cell is a new input list, so a new run.
    cohort = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (1, 2)})
    labels = pd.read_csv(cohort / "labels.csv")
    labels.assign(cell_type=["myeloblast", "segmented neutrophil", ""]).to_csv(
        cohort / "labels.csv", index=False
    )
    first = run_ingest(task_runner, source=str(cohort), store=store, image_size=32)
    typed = pd.read_parquet(Store(store).run(first["run_id"]).cells_table)
    by_image = dict(
        zip(typed["source_uri"].str.split("/cohort/").str[1], typed["cell_type"], strict=True)
    )
    assert (
        by_image[labels["image"][0]] == "myeloblast"
        and by_image[labels["image"][1]] == "segmented neutrophil"
    )
    assert pd.isna(by_image[labels["image"][2]])
    labels.assign(cell_type=["monoblast", "segmented neutrophil", ""]).to_csv(
        cohort / "labels.csv", index=False
    )
    second = run_ingest(task_runner, source=str(cohort), store=store, image_size=32)
    assert second["run_id"] != first["run_id"] and not second["already_complete"]
    retyped = pd.read_parquet(Store(store).run(second["run_id"]).cells_table)
    assert sorted(retyped["cell_type"].dropna()) == ["monoblast", "segmented neutrophil"]


def test_a_flat_folder_is_ingested_as_one_pseudo_patient(lmu_cells, tmp_path, task_runner):
    source = (
        compose_class_source(lmu_cells, tmp_path / "cells", {"smear-17": ("MYO", 5)}) / "smear-17"
    )
    store = str(tmp_path / "store")
    result = run_ingest(task_runner, source=str(source), store=store, image_size=32, chunk_cells=4)
    assert result["layout"] == "flat" and result["cells"] == 5 and result["quarantined"] == 0
    assert result["run_id"].startswith("smear-17-")
    cells = pd.read_parquet(Store(store).run(result["run_id"]).cells_table)
    assert cells["patient_id"].tolist() == ["smear-17"] * 5


@pytest.mark.parametrize(
    "layout, error",
    [
        ("auto", r"no images found in \S+/notes \(layout patient\): 2 files, none an image"),
        (
            "patient",
            r"no usable images in \S+/notes \(layout patient\): 1 image, all refused at discovery: "
            r"image is not inside a patient folder \(1\)",
        ),
    ],
)
def test_a_source_without_usable_images_fails_before_anything_is_written(
    lmu_cells, tmp_path, task_runner, layout, error
):
    source = tmp_path / "notes"
    (source / "P1").mkdir(parents=True)
    (source / "P1" / "readme.txt").write_text("to do")
    (source / "P1" / "counts.csv").write_text("a,b\n")
    if layout == "patient":  # an image, but not where the named layout wants it
        (source / "cell.jpg").write_bytes(sorted((lmu_cells / "MYO").iterdir())[0].read_bytes())
    store = tmp_path / "store"
    with pytest.raises(NoImagesError, match=error):
        run_ingest(task_runner, source=str(source), store=str(store), layout=layout, image_size=32)
    assert not store.exists(), "nothing is written for a source without images"


def test_a_failed_ingest_is_listed_as_failed_with_its_reason(lmu_cells, tmp_path, task_runner):
    source = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (2, 2)})
    store = str(tmp_path / "store")
    paths = Store(store).run("batch-1")
    # What the run will write is in the way, of another shape: a real write failure after the plan.
    paths.store.create_cells_array(paths.cells_zarr, 3, 16, 3)
    params = dict(source=str(source), store=store, run_id="batch-1", image_size=32, chunk_cells=4)
    with pytest.raises(ValueError, match="already exists with shape"):
        run_ingest(task_runner, **params)
    listed = CliRunner().invoke(cli, ["runs", "list", "--store", store])
    assert listed.exit_code == 0, listed.output
    assert (
        "batch-1  failed (ValueError: " in listed.output
        and "already exists with shape" in listed.output
    )
    with pytest.raises(IncompleteRunError, match=r"it failed \(ValueError: "):
        require_complete(paths)

    paths.store.remove(paths.cells_zarr, recursive=True)
    run_ingest(task_runner, **params)
    listed = CliRunner().invoke(cli, ["runs", "list", "--store", store])
    assert "batch-1  complete, 4 cells" in listed.output, (
        "a rerun that completes the run clears its failure"
    )
    assert not paths.store.exists(paths.failed)
