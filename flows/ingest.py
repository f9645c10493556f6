"""The ``ingest`` flow: a source of cell images -> runs/<run_id>/cells.zarr + tables + _SUCCESS.

An ingest run is the decoded cells of one input list; scorings of it are separate records
(``runs/<run_id>/scores/<score_id>/``, :mod:`flows.score`).

Its steps (plan, submit each decoding shard, count its progress, write the tables) are also what
``score-smears`` composes, with each shard's scoring submitted beside its decoding, so that it can
start as soon as that shard is decoded.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from dataclasses import dataclass

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.futures import PrefectFuture

from aml_model.config import ScoringConfig
from flows.parameters import ImageSize, Layout, Positive, RunId, require_existing
from flows.progress import Progress, windowed_results
from flows.runner import shards_in_flight
from tasks.ingest import ShardSpec, ingest_shard, plan_shards, write_ingest_tables
from tasks.listing import Listing, list_inputs
from tasks.privacy import prefect_patient_id, prefect_patient_ids
from tasks.runs import RunConflictError, mark_complete, recording_failure, run_state
from tasks.store import Store, join
from tasks.store_layout import RunPaths

__all__ = [
    "CHUNKS_PER_TASK",
    "CHUNK_CELLS",
    "IngestPlan",
    "decode_shards",
    "discard_listing",
    "discover_source",
    "ensure_ingested",
    "finish_ingest",
    "ingest",
    "ingest_progress",
    "ingest_sources",
    "plan_ingest",
    "plan_source",
    "start_ingest",
    "submit_ingest_shard",
]

#: Cells per Zarr chunk, and chunks each decoding task writes: the flows' defaults.
CHUNK_CELLS = ScoringConfig.chunk_cells
CHUNKS_PER_TASK = ScoringConfig.chunks_per_task


@dataclass(frozen=True)
class IngestPlan:
    """What an ingest of ``source`` into one run will write, decided before anything is written.

    Attributes:
        found: the source's listing (its inputs are in its table, not here).
        fingerprint: hash of the inputs, their order, the image size and the chunking.
        paths: where the run lives (a view of the run store).
        complete: the run already has ``_SUCCESS``.
    """

    source: Store
    found: Listing
    fingerprint: str
    image_size: int
    chunk_cells: int
    paths: RunPaths
    complete: bool

    def summary(self) -> dict:
        return {
            "run_id": self.paths.run_id,
            "run": self.paths.root,
            "layout": self.found.layout,
            "inputs": self.found.n_inputs,
        }

    def recorded_counts(self) -> dict:
        """Cell and quarantine counts of the ingest report an earlier, finished ingest wrote."""
        return self.paths.store.read_json(self.paths.report)["counts"]


def discover_source(
    source: Store,
    layout: str,
    store: Store,
    image_size: int,
    chunk_cells: int,
    chunks_per_task: int,
    manifest_root: str | None = None,
    new_for: str | None = None,
) -> Listing:
    """The source's listing, made on a worker (:func:`tasks.listing.list_inputs`), with what
    discovery refused or ignored in the log.

    Its inputs go to a table under the store's ``_staging/`` (one row group per decoding shard of
    ``chunk_cells * chunks_per_task`` inputs), which :func:`discard_listing` removes once the run
    is decoded; the flow holds counts, refusals and per-patient versions only.

    Raises :class:`tasks.discover.NoImagesError` (from the task) when it holds no image to
    decode: before anything is written, so that such a source leaves no run in the store.
    """
    logger = get_run_logger()
    found = list_inputs.submit(
        source,
        layout,
        store,
        join(store.staging, uuid.uuid4().hex, "inputs.parquet"),
        image_size,
        chunk_cells,
        chunk_cells * chunks_per_task,
        manifest_root,
        new_for,
    ).result()
    logger.info(
        "layout %s: %d candidate images, %d refused at discovery, %d non-image files ignored",
        found.layout,
        found.n_inputs,
        len(found.rejected),
        len(found.ignored),
    )
    if found.layout == "flat" and found.n_inputs:
        logger.info(
            "flat folder: its images are scored as one pseudo-patient %r",
            prefect_patient_id(found.first_patient),
        )
    if found.empty_patients:
        logger.warning(
            "patient folders without images: %s",
            ", ".join(prefect_patient_ids(found.empty_patients)),
        )
    if found.unknown_classes:
        logger.warning(
            "class folders not in the class map (label unknown): %s",
            ", ".join(found.unknown_classes),
        )
    if found.skipped_links:
        # Counts and reasons only: a link's path names its patient folder (tasks.privacy).
        reasons = sorted({link["reason"] for link in found.skipped_links})
        logger.warning(
            "%d links or folders not followed (%s): see skipped_links in the ingest report",
            len(found.skipped_links),
            "; ".join(reasons),
        )
    return found


def discard_listing(store: Store, found: Listing) -> None:
    """Remove a listing's input table once no shard will read it, and on local disk the staging
    folder when no other listing is in it."""
    store.remove(found.inputs_url.rsplit("/", 1)[0], recursive=True)
    if store.is_local:
        with contextlib.suppress(OSError):  # another flow run's listing is there: it stays
            os.rmdir(store.resolve(store.staging)[1])


def plan_ingest(source: Store, found: Listing, store: Store, run_id: str | None) -> IngestPlan:
    """Derive the run id of the inputs ``found`` in ``source`` and refuse a run id that holds other
    inputs (removing the listing: nothing will read it)."""
    fingerprint = found.fingerprint
    run_id = (
        run_id
        or f"{posixpath.basename(source.url.rstrip('/')).rsplit('.', 1)[0]}-{fingerprint[:12]}"
    )
    paths = store.run(run_id)
    state = run_state(paths)
    if state.plan is not None and state.plan.get("fingerprint") != fingerprint:
        message = (
            f"run {run_id} in {store.url} was ingested from a different input list; "
            f"use a new --run-id or remove {paths.root}"
        )
        discard_listing(store, found)
        raise RunConflictError(message)
    if state.plan is not None and not state.complete:
        get_run_logger().info("run %s is incomplete: resuming", run_id)
    return IngestPlan(
        source=source,
        found=found,
        fingerprint=fingerprint,
        image_size=found.image_size,
        chunk_cells=found.chunk_cells,
        paths=paths,
        complete=state.complete,
    )


def ensure_ingested(plan: IngestPlan, chunks_per_task: int) -> dict[str, int]:
    """Decode the plan's inputs unless its run is complete; returns the run's cell counts. The
    listing's input table is removed either way."""
    try:
        if plan.complete:
            get_run_logger().info(
                "run %s is already ingested: reusing its cells", plan.paths.run_id
            )
            return plan.recorded_counts()
        with recording_failure([plan.paths]):
            receipts = decode_shards(plan, start_ingest(plan, chunks_per_task))
            return finish_ingest(plan, receipts, mark_success=True)
    finally:
        discard_listing(plan.paths.store, plan.found)


def plan_source(source: Store, store: Store, layout: str, image_size: int) -> IngestPlan:
    """Discover ``source`` and plan its run with the default chunking (run id from its inputs):
    the first step of a flow that ingests as a step; ``ensure_ingested(plan, CHUNKS_PER_TASK)`` decodes."""
    found = discover_source(source, layout, store, image_size, CHUNK_CELLS, CHUNKS_PER_TASK)
    return plan_ingest(source, found, store, None)


def ingest_sources(
    sources: list[Store], store: Store, layout: str, image_size: int
) -> tuple[list[RunPaths], bool]:
    """Ingest every source on the task runner, each planned before any is decoded; returns the runs
    and whether all name patients."""
    plans: list[IngestPlan] = []
    try:
        for source in sources:
            plans.append(plan_source(source, store, layout, image_size))
        for plan in plans:
            ensure_ingested(plan, CHUNKS_PER_TASK)
    finally:
        for plan in plans:
            discard_listing(store, plan.found)
    return [p.paths for p in plans], all(p.found.layout not in ("class", "flat") for p in plans)


def start_ingest(plan: IngestPlan, chunks_per_task: int) -> list[ShardSpec]:
    """Write the run's plan and images array; returns the decoding shards, each of whole chunks."""
    paths, found = plan.paths, plan.found
    paths.store.write_json(
        paths.plan,
        {
            "fingerprint": plan.fingerprint,
            "source": plan.source.url,
            "layout": found.layout,
            "image_size": plan.image_size,
            "chunk_cells": plan.chunk_cells,
            "inputs": found.n_inputs,
        },
    )
    paths.store.create_cells_array(
        paths.cells_zarr, found.n_inputs, plan.image_size, plan.chunk_cells
    )
    return plan_shards(found.n_inputs, found.inputs_url, plan.chunk_cells, chunks_per_task)


def submit_ingest_shard(plan: IngestPlan, spec: ShardSpec) -> PrefectFuture:
    """Submit the task that decodes one shard; its result is the shard's receipt."""
    return ingest_shard.submit(
        spec,
        plan.paths.cells_zarr,
        plan.paths.shard_marker("ingest", spec["shard"]),
        plan.fingerprint,
        plan.image_size,
        plan.source,
        plan.paths.store,
    )


def ingest_progress(plan: IngestPlan, n_shards: int, receipts: list[dict]) -> Progress:
    """The decoding's progress in the log and an artifact, counting the images of ``receipts``
    (the shards' receipts, appended as they finish)."""

    def line(percent: float, done: int) -> str:
        images = sum(receipt["inputs"] for receipt in receipts)
        return (
            f"ingest {percent:5.1f}%: {done}/{n_shards} shards, "
            f"{images}/{plan.found.n_inputs} images"
        )

    return Progress(n_shards, "ingest-progress", f"ingest of {plan.source.url}", line)


def decode_shards(plan: IngestPlan, shards: list[ShardSpec]) -> list[dict]:
    """Decode ``shards`` (:func:`start_ingest`), a window at a time (:func:`flows.progress.windowed_results`);
    every shard's receipt (:func:`tasks.ingest.ingest_shard`) as it finished, with progress."""
    receipts: list[dict] = []
    progress = ingest_progress(plan, len(shards), receipts)
    for _spec, _position, decoded in windowed_results(
        shards, lambda spec: [submit_ingest_shard(plan, spec)], shards_in_flight
    ):
        receipts.append(decoded.result())
        progress.advance()
    return receipts


def finish_ingest(plan: IngestPlan, receipts: list[dict], mark_success: bool) -> dict[str, int]:
    """Write cells.parquet (a dataset), quarantine.parquet, the ingest report (and ``_SUCCESS``) from
    the shards' receipts, in any order; returns the counts."""
    paths, found = plan.paths, plan.found
    in_slot_order = sorted(receipts, key=lambda receipt: receipt["start"])
    counts = write_ingest_tables(in_slot_order, found.rejected, paths)
    report = {
        "source": plan.source.url,
        "root": found.root,
        "layout": found.layout,
        "counts": counts,
        "ignored": found.ignored,
        "empty_patients": found.empty_patients,
        "unknown_classes": found.unknown_classes,
        "diagnoses": found.diagnoses,
        "skipped_links": found.skipped_links,
    }
    paths.store.write_json(paths.report, report)
    if mark_success:
        mark_complete(paths)
    create_markdown_artifact(
        key="ingest-summary",
        markdown=(
            f"# Ingest {paths.run_id}\n\n| | |\n|---|---|\n| source | `{plan.source.url}` |\n"
            f"| layout | {found.layout} |\n| cells | {counts['cells']} |\n"
            f"| quarantined | {counts['quarantined']} |\n| ignored files | {len(found.ignored)} |\n"
            f"| empty patient folders | {len(found.empty_patients)} |\n| run | `{paths.root}` |\n"
        ),
        description="ingest summary",
    )
    return counts


@flow(name="ingest", validate_parameters=True)
def ingest(
    source: str,
    store: str,
    run_id: RunId | None = None,
    layout: Layout = "auto",
    image_size: ImageSize = 224,
    chunk_cells: Positive = CHUNK_CELLS,
    chunks_per_task: Positive = CHUNKS_PER_TASK,
    s3_endpoint_url: str | None = None,
    manifest_root: str | None = None,
) -> dict:
    """Decode every cell image of ``source`` into ``store``/runs/<run_id>/.

    Every parameter is checked (its type, then that the source exists) before anything is
    written (:mod:`flows.parameters`).

    Args:
        source: folder or manifest (any fsspec URL: a path, file://, s3://).
        store: run store URL.
        run_id: the run to write; by default derived from the source name and the input
            list, so rerunning an unchanged source reuses the same run.
        layout: "auto", "patient", "class" or "manifest".
        image_size: side of the stored cells, pixels (32 to 1024).
        chunk_cells: cells per Zarr chunk.
        chunks_per_task: Zarr chunks each Dask task decodes and writes; larger tasks spread
            Prefect's per-task overhead over more cells.
        s3_endpoint_url: S3-compatible endpoint (MinIO, moto) for s3:// URLs.
        manifest_root: manifest entries must lie under this URL (default: the manifest's folder).

    Returns:
        Summary: run_id, run root, layout, counts of inputs, cells, quarantined inputs, and
        whether the run was already complete.
    """
    # The parameters' types were checked before this line; now that the source (and root) exist.
    source_at = Store.at(source, s3_endpoint_url)
    require_existing([source_at], "source")
    require_existing(
        [Store.at(manifest_root, s3_endpoint_url)] if manifest_root else [], "manifest_root"
    )
    store_at = Store.at(store, s3_endpoint_url)
    found = discover_source(
        source_at, layout, store_at, image_size, chunk_cells, chunks_per_task, manifest_root
    )
    plan = plan_ingest(source_at, found, store_at, run_id)
    counts = ensure_ingested(plan, chunks_per_task)
    return {**plan.summary(), **counts, "already_complete": plan.complete}
