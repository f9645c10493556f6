"""A scoring's tables, built on the cluster from the shards' parts, equal what the whole-table rules
(:func:`build_cell_tables`, :func:`score_columns`, :func:`summarise_cohort`) make of the same
decoding records and probabilities: on real cells of both labs and on the demo cohort."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import dask.dataframe as dd
import pandas as pd

from aml_model.aggregate import PATIENT_COLUMNS, summarise_cohort
from aml_model.catalog import build_cell_tables
from aml_model.config import SummaryConfig
from aml_model.synthetic import DEMO_COHORT, write_synthetic_cohort
from flows.parameters import ScoreOptions, nest_options
from flows.score import score_smears
from tasks.discover import discover
from tasks.store import PROBABILITIES, Store, table_bytes
from tasks.summarise import score_columns
from tests.corpus import compose_patient_cohort

SETTINGS = {"min_cells": 10, "chunk_cells": 8, "chunks_per_task": 1, "batch_size": 8}


def as_read(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(table_bytes(frame)))


def real_cohort(lmu_cells: Path, pbc_cells: Path, root: Path) -> Path:
    """Patients of LMU cells at several blast fractions and of PBC cells of six types, with a
    repeated image in another shard, a broken file and a patient folder without images."""
    compose_patient_cohort(
        lmu_cells, root, {"A": (30, 10), "B": (2, 40), "C": (20, 20), "D": (0, 5)}
    )
    pbc = sorted(pbc_cells.glob("*/*.jpg"))
    for patient, files in {"H1": pbc[::100], "H2": pbc[7::350]}.items():
        (root / patient).mkdir()
        for file in files:
            shutil.copyfile(file, root / patient / file.name)
    first = sorted((root / "A").glob("*.jpg"))[0]
    shutil.copyfile(first, root / "A" / "zz-copy.jpg")
    shutil.copyfile(first, root / "B" / "zz-same-image-other-patient.jpg")
    (root / "C" / "broken.png").write_bytes(b"<html>not an image</html>")
    (root / "E").mkdir()
    return root


def assert_tables_as_whole_table_rules(store: Store, source: Path, result: dict) -> pd.DataFrame:
    """Rebuild the run's tables from its records parts and probabilities with the whole-table
    functions, and compare every table; returns the patients."""
    run = store.run(result["run_id"])
    scoring = run.scoring(result["score_id"])
    _, root = store.resolve(run.root)
    records = pd.concat(
        [
            pd.read_parquet(path)
            for path in sorted(Path(root, "_shards", "ingest").glob("*.parquet"))
        ],
        ignore_index=True,
    )
    found = discover(Store(str(source)), "auto")
    cells_ref, quarantine_ref = build_cell_tables(
        records, pd.DataFrame(found.rejected, columns=["source_uri", "patient_id", "reason"])
    )
    probabilities = store.open_cells_array(scoring.probabilities_zarr, PROBABILITIES)[:]
    config = SummaryConfig(min_cells=SETTINGS["min_cells"])
    scored_ref = score_columns(cells_ref, probabilities, config.threshold, result["model_version"])
    patients_ref = summarise_cohort(
        scored_ref,
        quarantine_ref,
        config,
        result["model_version"],
        extra_patients=tuple(found.empty_patients),
    )

    assert len(store.table_parts(run.cells_table)) > 1, "the cell table is a dataset of parts"
    pd.testing.assert_frame_equal(store.read_table(run.cells_table), as_read(cells_ref))
    pd.testing.assert_frame_equal(store.read_table(run.quarantine_table), as_read(quarantine_ref))
    pd.testing.assert_frame_equal(store.read_table(scoring.cells_table), as_read(scored_ref))
    # The datasets read as one table by pandas (pyarrow) and Dask as well.
    _, scored_folder = store.resolve(scoring.cells_table)
    pd.testing.assert_frame_equal(pd.read_parquet(scored_folder), as_read(scored_ref))
    # (Dask's own text type: pyarrow strings with NA for missing.)
    pd.testing.assert_frame_equal(
        dd.read_parquet(scored_folder).compute().reset_index(drop=True),
        as_read(scored_ref),
        check_dtype=False,
    )
    patients = store.read_table(scoring.patients_table)
    assert patients["patient_version"].notna().sum() >= len(patients) - len(found.empty_patients)
    pd.testing.assert_frame_equal(
        patients[list(PATIENT_COLUMNS)], as_read(patients_ref), check_exact=True
    )
    return patients


def test_tables_of_real_cells_equal_the_whole_table_rules(
    lmu_cells, pbc_cells, tmp_path, task_runner, tiny_model_file
):
    source = real_cohort(lmu_cells, pbc_cells, tmp_path / "cohort")
    store = Store(str(tmp_path / "store"))
    result = score_smears.with_options(task_runner=task_runner)(
        **nest_options(
            dict(source=str(source), store=store.url, model=str(tiny_model_file), **SETTINGS),
            ScoreOptions,
        )
    )
    patients = assert_tables_as_whole_table_rules(store, source, result)
    rows = patients.set_index("patient_id")
    assert list(rows.index) == ["A", "B", "C", "D", "E", "H1", "H2"]
    assert rows.loc["A", "n_quarantined"] == 1, "the repeated image in A"
    assert rows.loc["B", "n_scored"] == 43, "the same image in another patient is its own cell"
    assert rows.loc["C", "n_quarantined"] == 1 and rows.loc["D", "call"] == "INSUFFICIENT_CELLS"
    assert rows.loc["E", "qc_flags"] == "no_scored_cells;fewer_than_10_cells"


def test_tables_of_the_demo_cohort_equal_the_whole_table_rules(
    tmp_path, task_runner, tiny_model_file
):
    source = write_synthetic_cohort(tmp_path / "demo", DEMO_COHORT, 30, size=64, seed=3)
    store = Store(str(tmp_path / "store"))
    result = score_smears.with_options(task_runner=task_runner)(
        **nest_options(
            dict(source=str(source), store=store.url, model=str(tiny_model_file), **SETTINGS),
            ScoreOptions,
        )
    )
    patients = assert_tables_as_whole_table_rules(store, source, result)
    assert len(patients) == len(DEMO_COHORT) and (patients["n_scored"] == 30).all()
