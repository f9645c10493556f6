"""A source's discovery, run as a task on a worker: its inputs go to a Parquet table in the run
store and the flow gets a :class:`Listing`, which holds nothing per input.

The table (``_staging/<id>/inputs.parquet``, columns :data:`tasks.ingest.INPUT_COLUMNS`, in slot order) is cut
into row groups of one decoding shard each, so that a shard reads its own inputs
(:func:`tasks.ingest.read_inputs`) and nothing else. It lives as long as the flow run that listed it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import pandas as pd

from tasks.arrivals import only_new, patient_versions, scored_versions
from tasks.discover import discover, require_images
from tasks.ingest import INPUT_COLUMNS, plan_hash
from tasks.retry import store_task
from tasks.store import Store

__all__ = ["Listing", "list_inputs", "list_source"]


@dataclass(frozen=True)
class Listing:
    """What a flow holds of a source's discovery (:class:`tasks.discover.Discovery`): its counts,
    refusals and per-patient versions, and where its inputs are.

    Attributes:
        inputs_url: the input table, :data:`tasks.ingest.INPUT_COLUMNS`, one row group per ``rows_per_group``
            inputs.
        n_inputs: how many inputs it holds.
        fingerprint: :func:`tasks.ingest.plan_hash` of the inputs, ``image_size`` and ``chunk_cells``.
        first_patient: the first input's patient (the one pseudo-patient of a flat folder).
        versions: patient_id -> its version (:func:`tasks.arrivals.patient_versions`), of the
            patients listed (the new ones only, where only new patients were asked for).
        The others are :class:`tasks.discover.Discovery`'s.
    """

    source: str
    layout: str
    root: str
    inputs_url: str
    n_inputs: int
    fingerprint: str
    image_size: int
    chunk_cells: int
    first_patient: str | None
    versions: dict[str, str] = field(default_factory=dict)
    rejected: list[dict[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    empty_patients: list[str] = field(default_factory=list)
    unknown_classes: list[str] = field(default_factory=list)
    diagnoses: dict[str, str] = field(default_factory=dict)
    skipped_links: list[dict[str, str]] = field(default_factory=list)


def list_source(
    source: Store,
    layout: str,
    store: Store,
    inputs_url: str,
    image_size: int,
    chunk_cells: int,
    rows_per_group: int,
    manifest_root: str | None = None,
    new_for: str | None = None,
) -> Listing:
    """Discover ``source``, write its inputs to ``inputs_url`` in ``store`` and return its listing.

    Raises :class:`tasks.discover.NoImagesError` when the source holds no image to decode, before
    anything is written.

    Args:
        rows_per_group: inputs per row group of the table: a decoding shard's size, so that
            each shard reads one row group.
        new_for: a model version: keep only the patients whose current version it has not scored
            (:func:`tasks.arrivals.only_new`); None keeps them all.
    """
    found = discover(source, layout, manifest_root=manifest_root)
    require_images(found)  # of the whole source: only new patients may be none, which is no error
    versions = patient_versions(found)
    if new_for is not None:
        found, versions = only_new(found, versions, scored_versions(store, new_for))
    frame = pd.DataFrame(
        [(c.uri, c.patient_id, c.label, c.cell_type) for c in found.inputs],
        columns=list(INPUT_COLUMNS),
        dtype=object,
    )
    if found.inputs:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False, row_group_size=max(1, rows_per_group))
        store.write_bytes(inputs_url, buffer.getvalue())
    return Listing(
        source=found.source,
        layout=found.layout,
        root=found.root,
        inputs_url=inputs_url,
        n_inputs=len(found.inputs),
        fingerprint=plan_hash(found.inputs, image_size, chunk_cells),
        image_size=image_size,
        chunk_cells=chunk_cells,
        first_patient=found.inputs[0].patient_id if found.inputs else None,
        versions=versions,
        rejected=found.rejected,
        ignored=found.ignored,
        empty_patients=found.empty_patients,
        unknown_classes=found.unknown_classes,
        diagnoses=found.diagnoses,
        skipped_links=found.skipped_links,
    )


#: The Prefect task around :func:`list_source` (retried: listing is network I/O on S3).
list_inputs = store_task("list-inputs")(list_source)
