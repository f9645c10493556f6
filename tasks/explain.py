"""Grad-CAM of a patient's most blast-like cells, on the Dask worker that holds the model."""

from __future__ import annotations

import numpy as np

from aml_model.report import encode_png, legacy_report_name, report_name, top_cells
from aml_model.zarr_rows import read_cells
from tasks.predict import load_worker_model
from tasks.registry import ModelRef
from tasks.retry import store_task
from tasks.store import join
from tasks.store_layout import ScoringPaths

__all__ = [
    "EXPLAIN_MANIFEST",
    "explain_dir",
    "explain_patient",
    "find_explanation",
    "manifest_url",
    "reuse_explanation",
]

EXPLAIN_MANIFEST = "gradcam.json"


def explain_dir(paths: ScoringPaths, patient_id: str) -> str:
    """``runs/<run_id>/scores/<score_id>/explain/<patient>/``: the patient's overlays and their manifest."""
    return join(paths.root, "explain", report_name(patient_id))


def manifest_url(paths: ScoringPaths, patient_id: str) -> str:
    """The patient's Grad-CAM manifest; it is written after the overlays, so it lists only whole files."""
    return join(explain_dir(paths, patient_id), EXPLAIN_MANIFEST)


def find_explanation(paths: ScoringPaths, patient_id: str) -> str | None:
    """The folder of the patient's Grad-CAM in ``paths`` (overlays and manifest), or None.

    A scoring made before names were unique (:func:`aml_model.report.legacy_report_name`) is read
    too, where that folder's manifest is the patient's own: two ids could share it.
    """
    store = paths.store
    folder = explain_dir(paths, patient_id)
    if store.exists(join(folder, EXPLAIN_MANIFEST)):
        return folder
    legacy = join(paths.root, "explain", legacy_report_name(patient_id))
    manifest = join(legacy, EXPLAIN_MANIFEST)
    if not store.exists(manifest):
        return None
    return legacy if store.read_json(manifest)["patient_id"] == patient_id else None


@store_task("explain-patient")
def explain_patient(
    paths: ScoringPaths,
    patient_id: str,
    model: ModelRef,
    top_k: int,
) -> str:
    """Write Grad-CAM overlays (PNG) of the ``top_k`` most blast-like cells of a patient with scored cells.

    Files: ``explain/<patient>/<rank>-<cell>.png`` (rank 01 = most blast-like) and
    ``explain/<patient>/gradcam.json`` listing rank, cell_id, zarr_index, probability, logit
    and overlay file name of each.

    Returns:
        The manifest's URL.
    """
    from aml_model.explain import compute_gradcam

    store = paths.store
    top = top_cells(store.read_table(paths.cells_table), patient_id, top_k)
    slots = top["zarr_index"].to_numpy(dtype=np.int64)
    images = read_cells(store.open_cells_array(paths.cells_zarr), slots)
    # Grad-CAM needs the paper model in float32, whatever precision scoring used.
    cam = compute_gradcam(load_worker_model(model, store), images)
    folder = explain_dir(paths, patient_id)
    entries = []
    for rank, (row, overlay, logit) in enumerate(
        zip(top.itertuples(), cam.overlays, cam.logits, strict=True), 1
    ):
        name = f"{rank:02d}-{report_name(row.cell_id)}.png"
        store.write_bytes(join(folder, name), encode_png(overlay))
        entries.append(
            {
                "rank": rank,
                "cell_id": row.cell_id,
                "zarr_index": int(row.zarr_index),
                "probability": float(row.probability),
                "logit": float(logit),
                "overlay": name,
            }
        )
    manifest = {
        "patient_id": patient_id,
        "model_version": model.version,
        "top_k": top_k,
        "cells": entries,
    }
    return store.write_json(manifest_url(paths, patient_id), manifest)


@store_task("reuse-explanation")
def reuse_explanation(
    source: ScoringPaths,
    target: ScoringPaths,
    patient_id: str,
    model_version: str,
    top_k: int,
) -> bool:
    """Copy the patient's Grad-CAM from ``source``, a scoring with the same probabilities, into ``target``.

    The overlays depend on the model, the cells and their ranking by probability (the same in
    both) and on ``top_k``: a manifest of the same model and ``top_k`` is what
    :func:`explain_patient` would write again. The manifest is copied last, as it is written.

    Returns:
        Whether it was copied; False when ``source`` has no such Grad-CAM of the patient.
    """
    folder = find_explanation(source, patient_id)
    if folder is None:
        return False
    manifest = join(folder, EXPLAIN_MANIFEST)
    recorded = source.store.read_json(manifest)
    if recorded["model_version"] != model_version or recorded["top_k"] != top_k:
        return False
    for entry in recorded["cells"]:
        overlay = source.store.read_bytes(join(folder, entry["overlay"]))
        target.store.write_bytes(join(explain_dir(target, patient_id), entry["overlay"]), overlay)
    target.store.write_bytes(manifest_url(target, patient_id), source.store.read_bytes(manifest))
    return True
