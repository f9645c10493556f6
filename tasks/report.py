"""Render a scored run's per-patient HTML reports and cohort index into ``runs/<run_id>/scores/<score_id>/reports/``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from aml_model.calibration import CALIBRATED_COLUMN, call_probabilities
from aml_model.config import ScoringConfig
from aml_model.report import (
    GalleryCell,
    ModelInfo,
    PatientReport,
    cell_type_rates,
    encode_png,
    render_cohort_index,
    render_patient_report,
    report_name,
    top_cells,
)
from aml_model.zarr_rows import read_cells_by_chunk
from tasks.dask_compute import compute, on_cluster
from tasks.explain import EXPLAIN_MANIFEST, find_explanation
from tasks.inputs import input_names, quarantined_inputs, source_root
from tasks.registry import CARD_FILE
from tasks.retry import store_task
from tasks.store import Store, join
from tasks.store_layout import ScoringPaths

__all__ = [
    "OBJECT_STORE_LINKS",
    "build_reports",
    "cohort_type_rates",
    "index_url",
    "model_info",
    "report_url",
    "write_reports",
]

#: The cohort index's note on an object store: its patient links are relative, and a presigned URL
#: signs one object only, so from a private bucket they open only where the folder is served whole.
OBJECT_STORE_LINKS = (
    "The patient links below are relative: they open where this reports/ folder is served whole "
    "(a public or proxied bucket, or a downloaded copy, e.g. aws s3 sync). Opened from a presigned "
    "link of a private bucket they do not open: download the folder, or use a report's own "
    "presigned link where the Prefect artifact 'patient-reports' lists one."
)


def report_url(paths: ScoringPaths, patient_id: str) -> str:
    """``<scoring>/reports/<patient>.html``."""
    return join(paths.reports_root, f"{report_name(patient_id)}.html")


def index_url(paths: ScoringPaths) -> str:
    """``<scoring>/reports/index.html``, the cohort index page."""
    return paths.report_index


def model_info(store: Store, version: str) -> ModelInfo:
    """The model's version and, for a model registered in ``store``, the test metrics of its card."""
    card = join(store.models, version, CARD_FILE)
    if not store.exists(card):
        return ModelInfo(version=version, metrics=None)
    return ModelInfo(version=version, metrics=store.read_json(card).get("metrics"))


def _gallery(
    paths: ScoringPaths, cells: pd.DataFrame, patient_id: str, top_k: int, images
) -> tuple[tuple[GalleryCell, ...], bool]:
    """The patient's top cells, named by file (the name column of ``cells``, the patient's own), with
    the Grad-CAM overlays of its manifest where there is one."""
    folder = find_explanation(paths, patient_id)
    explained = folder is not None
    if explained:
        # The explained cells, exactly as Grad-CAM saw them (the same ranking, the same k).
        top = pd.DataFrame(paths.store.read_json(join(folder, EXPLAIN_MANIFEST))["cells"])
        overlays = [paths.store.read_bytes(join(folder, name)) for name in top["overlay"]]
    else:
        top = top_cells(cells, patient_id, top_k)
        overlays = [None] * len(top)
    slots = top["zarr_index"].to_numpy(dtype=np.int64)
    names = cells.set_index("zarr_index")["name"].loc[slots]
    # One chunk at a time: a read of all the slots at once decompresses their chunks together (48 MiB
    # a chunk of 16 1,024 px cells), which overran a memory-limited worker; one cell at a time
    # decompressed a chunk once per cell, 70% of the reports' time (1,400 LMU cells, 4 patients).
    pixels = read_cells_by_chunk(images, slots)
    gallery = tuple(
        GalleryCell(
            rank=rank,
            name=name,
            probability=float(row.probability),
            cell_png=encode_png(image),
            overlay_png=overlay,
        )
        for rank, (row, name, image, overlay) in enumerate(
            zip(top.itertuples(), names, pixels, overlays, strict=True), 1
        )
    )
    return gallery, explained


@dataclass(frozen=True)
class _Reporting:
    """What every patient's report of one scoring needs besides its own rows: small, sent to the
    workers once."""

    paths: ScoringPaths
    root: str
    top_k: int
    threshold: float
    model: ModelInfo


def _render(
    job: _Reporting, summary: dict, mine: pd.DataFrame, quarantined: pd.DataFrame, images
) -> None:
    """Write one patient's report from its summary, its own scored cells (named) and the run's
    quarantine."""
    patient_id = summary["patient_id"]
    gallery, explained = _gallery(job.paths, mine, patient_id, job.top_k, images)
    lost = quarantined.loc[quarantined["patient_id"] == patient_id, ["name", "reason"]]
    report = PatientReport(
        run_id=job.paths.run_id,
        summary=summary,
        probabilities=call_probabilities(mine),  # calibrated where a site calibration was applied
        gallery=gallery,
        explained=explained,
        model=job.model,
        cell_types=_type_rows(mine, job.threshold),
        quarantined=tuple(lost.to_dict(orient="records")),
    )
    job.paths.store.write_bytes(
        report_url(job.paths, patient_id), render_patient_report(report).encode()
    )


_RENDERED = pd.DataFrame({"patient_id": pd.Series(dtype=object)})


def _render_partition(
    cells: pd.DataFrame, job: _Reporting, summaries: dict[str, dict], quarantined: pd.DataFrame
) -> pd.DataFrame:
    """Write the reports of the patients whose cells are in ``cells`` (a partition shuffled by
    patient); returns their ids."""
    if cells.empty:
        return _RENDERED
    images = job.paths.store.open_cells_array(job.paths.cells_zarr)
    named = cells.assign(name=input_names(cells["source_uri"], job.root))
    rendered = []
    for patient_id, mine in named.groupby("patient_id", sort=True):
        if patient_id in summaries:
            # In slot order, as the patient's rows lie in the table.
            _render(job, summaries[patient_id], mine.sort_values("zarr_index"), quarantined, images)
            rendered.append(patient_id)
    return pd.DataFrame({"patient_id": pd.Series(rendered, dtype=object)})


def cohort_type_rates(store: Store, cells_table: str, threshold: float) -> pd.DataFrame:
    """:func:`aml_model.report.cell_type_rates` of a scored cell table, read on a worker of the
    flow's cluster (where there is one) and only the columns the rates need."""
    import dask

    wanted = ["cell_type", "label", "probability", CALIBRATED_COLUMN]
    columns = [c for c in wanted if c in store.table_columns(cells_table)]

    def rates() -> pd.DataFrame:
        return cell_type_rates(store.read_table(cells_table, columns=columns), threshold)

    with on_cluster() as (scheduler, _):
        return compute(scheduler, dask.delayed(rates, pure=False)())[0]


def build_reports(paths: ScoringPaths) -> str:
    """Render every patient's report and the cohort index of a scored run.

    Reads cells.parquet, patients.parquet, score.json, the cell images, the Grad-CAM manifests of
    ``explain/`` and the run's quarantine and ingest report (to name files as the source does);
    writes ``reports/<patient>.html`` and ``reports/index.html``. The scored cells are read on the
    flow's cluster and shuffled by patient, each partition rendering its patients' reports, so no
    process holds the whole table (:mod:`tasks.dask_compute`).

    Returns:
        The index page's URL.
    """
    import dask
    import dask.dataframe as dd

    store = paths.store
    settings = store.read_json(paths.settings)
    threshold = float(settings["threshold"])
    model = model_info(store, settings["model_version"])
    job = _Reporting(
        paths=paths,
        root=source_root(paths),
        top_k=int(settings.get("explain_top_k", ScoringConfig.explain_top_k)),
        threshold=threshold,
        model=model,
    )
    patients = store.read_table(paths.patients_table)
    summaries = {row["patient_id"]: row for row in patients.to_dict(orient="records")}
    quarantined = quarantined_inputs(paths)
    with on_cluster() as (scheduler, shuffle):
        cells = dd.from_map(
            store.read_table, store.table_parts(paths.cells_table) or [paths.cells_table]
        )
        by_patient = cells.shuffle(
            "patient_id", npartitions=cells.npartitions, shuffle_method=shuffle
        )
        # One copy each in the graph, which every partition's task reads.
        rendered = by_patient.map_partitions(
            _render_partition,
            job,
            dask.delayed(summaries, pure=True),
            dask.delayed(quarantined, pure=True),
            meta=_RENDERED,
        )
        (rendered,) = compute(scheduler, rendered)
        no_cells = cells._meta.assign(name=pd.Series(dtype=object))
    images = store.open_cells_array(paths.cells_zarr)
    for patient_id in sorted(summaries.keys() - set(rendered["patient_id"])):
        _render(job, summaries[patient_id], no_cells, quarantined, images)
    index = render_cohort_index(
        paths.run_id,
        patients,
        model,
        cell_types=tuple(
            cohort_type_rates(store, paths.cells_table, threshold).to_dict(orient="records")
        ),
        links_note=None if store.is_local else OBJECT_STORE_LINKS,
    )
    return store.write_bytes(index_url(paths), index.encode())


def _type_rows(cells: pd.DataFrame, threshold: float) -> tuple[dict, ...]:
    return tuple(cell_type_rates(cells, threshold).to_dict(orient="records"))


@store_task("write-reports")
def write_reports(paths: ScoringPaths) -> str:
    """Task form of :func:`build_reports`; returns the index page's URL."""
    return build_reports(paths)
