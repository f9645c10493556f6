"""The layout of one run in the store: views of a :class:`tasks.store.Store` that name each piece.

docs/design.md, "The run store", describes the folders; only this module spells their names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tasks.store_url import join

if TYPE_CHECKING:
    from tasks.store import Store

__all__ = ["FAILED", "SCORE_RECORD", "SHARDS", "SUCCESS", "RunPaths", "ScoringPaths"]

SUCCESS = "_SUCCESS"
# Why a run or scoring stopped, written when it fails; _SUCCESS, when a rerun completes it, wins.
FAILED = "_FAILED"
SCORE_RECORD = "score.json"
SHARDS = "_shards"


def _in_root(*parts: str) -> property:
    """A path property: ``parts`` joined under the record's root."""
    return property(lambda self: join(self.root, *parts))


def _shard_marker(self, stage: str, shard: int) -> str:
    """A shard's record of what it wrote; its presence means the shard is complete."""
    return join(self.root, SHARDS, stage, f"{shard:05d}.json")


@dataclass(frozen=True)
class RunPaths:
    """Where each piece of an ingest run lives: ``runs/<run_id>/`` (docs/design.md, "The run store").

    An ingest run holds a source's decoded cells and their tables; its scorings live under
    ``scores/<score_id>/`` (:class:`ScoringPaths`), so a new model or new call settings add a
    scoring and never rewrite the cells or an earlier scoring.
    """

    store: Store
    run_id: str

    @property
    def root(self) -> str:
        return join(self.store.runs, self.run_id)

    cells_zarr = _in_root("cells.zarr")
    cells_table = _in_root("cells.parquet")
    quarantine_table = _in_root("quarantine.parquet")
    plan = _in_root("ingest_plan.json")
    report = _in_root("ingest_report.json")
    success = _in_root(SUCCESS)
    failed = _in_root(FAILED)
    scores_root = _in_root("scores")
    # Where a run of the old layout (ingest and scoring in one folder) kept its scoring settings.
    legacy_score_record = _in_root(SCORE_RECORD)
    shard_marker = _shard_marker

    def scoring(self, score_id: str) -> ScoringPaths:
        return ScoringPaths(self, score_id)


@dataclass(frozen=True)
class ScoringPaths:
    """Where each piece of one scoring of an ingest run lives: ``runs/<run_id>/scores/<score_id>/``.

    The images (``cells_zarr``), the ingest cell table, the quarantine and the ingest report are
    the ingest run's, read only here; the probabilities, the scored cell table (the ingest's with
    probability columns), the patients, settings (score.json), reports and Grad-CAM overlays are
    the scoring's own.
    """

    ingest: RunPaths
    score_id: str

    @property
    def store(self) -> Store:
        return self.ingest.store

    @property
    def run_id(self) -> str:
        return self.ingest.run_id

    @property
    def root(self) -> str:
        return join(self.ingest.scores_root, self.score_id)

    cells_zarr = property(lambda self: self.ingest.cells_zarr)
    ingest_cells_table = property(lambda self: self.ingest.cells_table)
    quarantine_table = property(lambda self: self.ingest.quarantine_table)
    report = property(lambda self: self.ingest.report)
    probabilities_zarr = _in_root("probabilities.zarr")
    cells_table = _in_root("cells.parquet")
    patients_table = _in_root("patients.parquet")
    settings = _in_root(SCORE_RECORD)
    success = _in_root(SUCCESS)
    failed = _in_root(FAILED)
    reports_root = _in_root("reports")
    report_index = _in_root("reports", "index.html")
    score_shards = _in_root(SHARDS, "score")
    shard_marker = _shard_marker
