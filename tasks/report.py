"""Render a scored run's per-patient HTML reports and cohort index into ``runs/<run_id>/scores/<score_id>/reports/``."""

from __future__ import annotations

import numpy as np
import pandas as pd

from aml_model.calibration import call_probabilities
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
from aml_model.zarr_rows import read_cells
from tasks.explain import EXPLAIN_MANIFEST, find_explanation
from tasks.inputs import input_names, quarantined_inputs, source_root
from tasks.registry import CARD_FILE
from tasks.retry import store_task
from tasks.store import Store, join
from tasks.store_layout import ScoringPaths

__all__ = [
    "OBJECT_STORE_LINKS",
    "build_reports",
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
    pixels = read_cells(images, slots)
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


def build_reports(paths: ScoringPaths) -> str:
    """Render every patient's report and the cohort index of a scored run.

    Reads cells.parquet, patients.parquet, score.json, the cell images, the Grad-CAM manifests of
    ``explain/`` and the run's quarantine and ingest report (to name files as the source does);
    writes ``reports/<patient>.html`` and ``reports/index.html``.

    Returns:
        The index page's URL.
    """
    store = paths.store
    settings = store.read_json(paths.settings)
    top_k = int(settings.get("explain_top_k", ScoringConfig.explain_top_k))
    cells = store.read_table(paths.cells_table)
    cells = cells.assign(name=input_names(cells["source_uri"], source_root(paths)))
    quarantined = quarantined_inputs(paths)
    patients = store.read_table(paths.patients_table)
    model = model_info(store, settings["model_version"])
    images = store.open_cells_array(paths.cells_zarr)
    threshold = float(settings["threshold"])
    # Each patient's cells found once: filtering the whole table per patient is quadratic.
    by_patient = dict(tuple(cells.groupby("patient_id", sort=False)))
    for summary in patients.to_dict(orient="records"):
        patient_id = summary["patient_id"]
        mine = by_patient.get(patient_id, cells.iloc[:0])
        gallery, explained = _gallery(paths, mine, patient_id, top_k, images)
        probabilities = call_probabilities(mine)  # calibrated where a site calibration was applied
        lost = quarantined.loc[quarantined["patient_id"] == patient_id, ["name", "reason"]]
        report = PatientReport(
            run_id=paths.run_id,
            summary=summary,
            probabilities=probabilities,
            gallery=gallery,
            explained=explained,
            model=model,
            cell_types=_type_rows(mine, threshold),
            quarantined=tuple(lost.to_dict(orient="records")),
        )
        store.write_bytes(report_url(paths, patient_id), render_patient_report(report).encode())
    index = render_cohort_index(
        paths.run_id,
        patients,
        model,
        cell_types=_type_rows(cells, threshold),
        links_note=None if store.is_local else OBJECT_STORE_LINKS,
    )
    return store.write_bytes(index_url(paths), index.encode())


def _type_rows(cells: pd.DataFrame, threshold: float) -> tuple[dict, ...]:
    return tuple(cell_type_rates(cells, threshold).to_dict(orient="records"))


@store_task("write-reports")
def write_reports(paths: ScoringPaths) -> str:
    """Task form of :func:`build_reports`; returns the index page's URL."""
    return build_reports(paths)
