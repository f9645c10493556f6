"""The ``ingest`` flow: a source of cell images -> runs/<run_id>/cells.zarr + tables + _SUCCESS."""

from __future__ import annotations

import posixpath

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.progress import results_with_progress
from tasks import storage
from tasks.discover import discover_inputs
from tasks.ingest import ingest_shard, plan_hash, plan_shards, write_ingest_tables
from tasks.runs import RunConflictError, run_state

__all__ = ["ingest"]


@flow(name="ingest", validate_parameters=True)
def ingest(
    source: str,
    store: str,
    run_id: str | None = None,
    layout: str = "auto",
    image_size: int = 224,
    chunk_cells: int = 64,
    chunks_per_task: int = 4,
    s3_endpoint_url: str | None = None,
    manifest_root: str | None = None,
    mark_success: bool = True,
    run_id_suffix: str = "",
) -> dict:
    """Decode every cell image of ``source`` into ``store``/runs/<run_id>/.

    Args:
        source: folder or manifest (any fsspec URL: a path, file://, s3://).
        store: run store URL.
        run_id: the run to write; by default derived from the source name and the input
            list, so rerunning an unchanged source reuses the same run.
        layout: "auto", "patient", "class" or "manifest".
        image_size: side of the stored cells, pixels.
        chunk_cells: cells per Zarr chunk.
        chunks_per_task: Zarr chunks each Dask task decodes and writes; larger tasks spread
            Prefect's per-task overhead over more cells.
        s3_endpoint_url: S3-compatible endpoint (MinIO, moto) for s3:// URLs.
        manifest_root: manifest entries must lie under this URL (default: the manifest's folder).
        mark_success: write ``_SUCCESS`` at the end (False when a parent flow goes on).
        run_id_suffix: appended to a derived run id (a parent flow adds its model version).

    Returns:
        Summary: run_id, run root, layout, counts of inputs, cells, quarantined inputs, and
        whether the run was already complete.
    """
    logger = get_run_logger()
    source_options = storage.storage_options_for(source, s3_endpoint_url)
    store_options = storage.storage_options_for(store, s3_endpoint_url)
    found = discover_inputs(source, layout, source_options, manifest_root)
    logger.info("layout %s: %d candidate images, %d refused at discovery, %d non-image files ignored",
                found.layout, len(found.inputs), len(found.rejected), len(found.ignored))
    if found.empty_patients:
        logger.warning("patient folders without images: %s", ", ".join(found.empty_patients))
    if found.unknown_classes:
        logger.warning("class folders not in the class map (label unknown): %s", ", ".join(found.unknown_classes))
    if not found.inputs and not found.rejected:
        message = f"no images found in {source} (layout {found.layout})"
        raise FileNotFoundError(message)

    fingerprint = plan_hash(found.inputs, image_size, chunk_cells)
    run_id = run_id or f"{posixpath.basename(source.rstrip('/')).rsplit('.', 1)[0]}-{fingerprint[:12]}{run_id_suffix}"
    paths = storage.RunPaths(store, run_id)
    state = run_state(paths, store_options)
    if state.plan is not None and state.plan.get("fingerprint") != fingerprint:
        message = (f"run {run_id} in {store} was ingested from a different input list; "
                   f"use a new --run-id or remove {paths.root}")
        raise RunConflictError(message)
    summary = {"run_id": run_id, "run": paths.root, "layout": found.layout, "inputs": len(found.inputs)}
    if state.complete:
        report = storage.read_json(paths.report, store_options)
        logger.info("run %s is already complete: nothing to do", run_id)
        return {**summary, **report["counts"], "already_complete": True}
    if state.plan is not None:
        logger.info("run %s is incomplete: resuming", run_id)

    storage.write_json(paths.plan, {"fingerprint": fingerprint, "source": source, "layout": found.layout,
                                    "image_size": image_size, "chunk_cells": chunk_cells,
                                    "inputs": len(found.inputs)}, store_options)
    storage.create_cells_array(paths.cells_zarr, len(found.inputs), image_size, chunk_cells, store_options)
    shards = plan_shards(found.inputs, chunk_cells, chunks_per_task)
    futures = [
        ingest_shard.submit(spec, paths.cells_zarr, paths.shard_marker("ingest", spec["shard"]), fingerprint,
                            image_size, source_options, store_options)
        for spec in shards
    ]
    records: list[dict] = []
    progress = results_with_progress(futures, "ingest-progress", f"ingest of {source}")
    for done, (percent, shard_records) in enumerate(progress, start=1):
        records.extend(shard_records)
        logger.info("ingest %5.1f%%: %d/%d shards, %d/%d images", percent, done, len(futures),
                    len(records), len(found.inputs))

    counts = write_ingest_tables(found.inputs, records, found.rejected, paths, store_options)
    report = {
        "source": source, "layout": found.layout, "counts": counts,
        "ignored": found.ignored, "empty_patients": found.empty_patients,
        "unknown_classes": found.unknown_classes, "diagnoses": found.diagnoses,
    }
    storage.write_json(paths.report, report, store_options)
    if mark_success:
        storage.write_bytes(paths.success, b"", store_options)
    create_markdown_artifact(
        key="ingest-summary",
        markdown=(f"# Ingest {run_id}\n\n| | |\n|---|---|\n| source | `{source}` |\n| layout | {found.layout} |\n"
                  f"| cells | {counts['cells']} |\n| quarantined | {counts['quarantined']} |\n"
                  f"| ignored files | {len(found.ignored)} |\n| empty patient folders | {len(found.empty_patients)} |\n"
                  f"| run | `{paths.root}` |\n"),
        description="ingest summary",
    )
    return {**summary, **counts, "already_complete": False}
