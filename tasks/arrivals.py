"""New arrivals: which patients of a source a model has not scored yet, and the ledger that says so.

A patient's *version* is a hash of its image set: the patient id and the URIs of its images,
those refused at discovery included (labels and cell types are annotations, not what is
scored). Every complete scoring adds its patients' versions
to ``ledger/<model_version>/<run_id>.<score_id>.json``; ``score --new-only`` scores the patients
whose current version is not in the champion's ledger. A patient whose folder changed has a new
version: it is scored again, into a new run, and its earlier scoring stays where it was.
An image replaced in place under the same name keeps the version (URIs, not bytes, are hashed:
hashing bytes would mean reading every image of the source on every check).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import defaultdict

import pandas as pd

from tasks.discover import Discovery
from tasks.store import Store, join
from tasks.store_layout import ScoringPaths

__all__ = ["ledger_root", "only_new", "patient_versions", "record_scored", "scored_versions"]


def patient_versions(found: Discovery) -> dict[str, str]:
    """patient_id -> the hash (hex, 64 characters) of that patient's image set in ``found``."""
    members: dict[str, list] = defaultdict(list)
    for cell in found.inputs:
        members[cell.patient_id].append(cell.uri)
    for refused in found.rejected:
        members[refused["patient_id"]].append(refused["source_uri"])
    for patient_id in found.empty_patients:
        members.setdefault(patient_id, [])
    return {
        patient_id: hashlib.sha256(json.dumps([patient_id, sorted(entries)]).encode()).hexdigest()
        for patient_id, entries in members.items()
    }


def only_new(
    found: Discovery, versions: dict[str, str], scored: set[str]
) -> tuple[Discovery, dict[str, str]]:
    """``found`` restricted to the patients whose version is not in ``scored``.

    Args:
        found: the source's discovery.
        versions: its patients' versions (:func:`patient_versions` of ``found``).
        scored: versions a model has scored (:func:`scored_versions`).

    Returns:
        The restricted discovery (inputs, refusals and empty folders of new patients only) and
        the new patients' versions.
    """
    new = {p: v for p, v in versions.items() if v not in scored}
    restricted = dataclasses.replace(
        found,
        inputs=[c for c in found.inputs if c.patient_id in new],
        rejected=[r for r in found.rejected if r["patient_id"] in new],
        empty_patients=[p for p in found.empty_patients if p in new],
    )
    return restricted, new


def ledger_root(store: Store, model_version: str) -> str:
    return join(store.ledger, model_version)


def scored_versions(store: Store, model_version: str) -> set[str]:
    """Every patient version that a complete scoring with ``model_version`` recorded."""
    root = ledger_root(store, model_version)
    versions: set[str] = set()
    for name in store.list_names(root):
        versions.update(e["patient_version"] for e in store.read_json(join(root, name)))
    return versions


def record_scored(scoring: ScoringPaths, model_version: str, patients: pd.DataFrame) -> str:
    """Add a complete scoring's patient versions to the model's ledger; returns the entry's URL.

    Written after the scoring's ``_SUCCESS``: a crash in between leaves the patients out of the
    ledger, so ``--new-only`` finds the same complete scoring again and records it then. An
    entry already there is left as it is.
    """
    store = scoring.store
    url = join(ledger_root(store, model_version), f"{scoring.run_id}.{scoring.score_id}.json")
    if store.exists(url):
        return url
    entries = [
        {
            "patient_id": row.patient_id,
            "patient_version": row.patient_version,
            "run_id": scoring.run_id,
            "score_id": scoring.score_id,
        }
        for row in patients.itertuples()
    ]
    return store.write_json(url, entries)
