"""A run's inputs named as a person finds them: by their path in the source, not by URI or cell hash.

The names come from the source root recorded in the run's ingest report
(:func:`tasks.discover.input_name`). In the patient layout a name starts with the patient's
folder, so they are for the terminal and the run store's reports, which show patient ids anyway;
what goes to Prefect keeps to counts and reasons (:mod:`tasks.privacy`).
"""

from __future__ import annotations

import pandas as pd

from tasks.discover import input_name
from tasks.store_layout import RunPaths, ScoringPaths

__all__ = ["input_names", "quarantined_inputs", "source_root"]


def source_root(paths: RunPaths | ScoringPaths) -> str:
    """The root the run's inputs are named under; "" for a run ingested before roots were recorded."""
    return paths.store.read_json(paths.report).get("root", "")


def input_names(uris: pd.Series, root: str) -> pd.Series:
    """:func:`tasks.discover.input_name` of each URI, index kept."""
    return uris.map(lambda uri: input_name(uri, root))


def quarantined_inputs(paths: RunPaths | ScoringPaths) -> pd.DataFrame:
    """The run's quarantine.parquet with each input's name: name, patient_id, reason, source_uri.

    A reason that names another input (a duplicate's first copy) names it the same way.
    Ordered by patient, then name; patient_id is "" for an input that belongs to no patient.
    """
    quarantine = paths.store.read_table(paths.quarantine_table)
    root = source_root(paths)
    prefix = root.rstrip("/") + "/"
    reasons = quarantine["reason"].astype(str)
    named = quarantine.assign(
        name=input_names(quarantine["source_uri"].astype(str), root),
        reason=reasons.str.replace(prefix, "", regex=False) if root else reasons,
    )
    return (
        named[["name", "patient_id", "reason", "source_uri"]]
        .sort_values(["patient_id", "name"], kind="stable")
        .reset_index(drop=True)
    )
