"""Per-patient AML call from cell probabilities (DESIGN.md, "Per-patient AML call").

With a site calibration the patient table also carries the blast fraction corrected for the site's
rates (:func:`rogan_gladen`, :func:`with_corrected_fraction`). The call stays on the observed
blast-like fraction's interval: at a site's ``fraction`` operating point (aml_model.calibration)
both give the same call, since the correction maps the blast cut-off to itself there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from aml_model.config import SummaryConfig

__all__ = [
    "CALLS",
    "CORRECTED_COLUMNS",
    "PATIENT_COLUMNS",
    "RESEARCH_NOTE",
    "PatientSummary",
    "rogan_gladen",
    "summarise_cohort",
    "summarise_patient",
    "summarise_patients",
    "with_corrected_fraction",
]

RESEARCH_NOTE = "research use only: not a diagnosis"
CALLS = ("AML_SUSPECTED", "NOT_SUSPECTED", "INDETERMINATE", "INSUFFICIENT_CELLS")
PATIENT_COLUMNS = (
    "patient_id",
    "n_cells",
    "n_scored",
    "n_quarantined",
    "n_blast_like",
    "blast_fraction",
    "ci_low",
    "ci_high",
    "mean_probability",
    "median_probability",
    "call",
    "qc_flags",
    "model_version",
    "threshold",
    "blast_cutoff",
    "min_cells",
    "max_quarantined_share",
    "note",
)
CORRECTED_COLUMNS = ("blast_fraction_corrected", "corrected_ci_low", "corrected_ci_high")
"""Columns a site calibration adds: blast_fraction, ci_low and ci_high through :func:`rogan_gladen`."""


@dataclass(frozen=True)
class PatientSummary:
    """One patient's summary; fields are the columns of patients.parquet.

    ``n_cells`` counts the inputs found (scored + quarantined). Fractions and probabilities
    are NaN when no cell was scored. ``qc_flags`` is a ";"-joined list, empty when clean.
    ``threshold`` to ``max_quarantined_share`` are the call settings that made the row.
    """

    patient_id: str
    n_cells: int
    n_scored: int
    n_quarantined: int
    n_blast_like: int
    blast_fraction: float
    ci_low: float
    ci_high: float
    mean_probability: float
    median_probability: float
    call: str
    qc_flags: str
    model_version: str
    threshold: float
    blast_cutoff: float
    min_cells: int
    max_quarantined_share: float
    note: str = RESEARCH_NOTE


def summarise_patient(
    patient_id: str,
    probabilities: np.ndarray,
    n_quarantined: int,
    config: SummaryConfig,
    model_version: str,
) -> PatientSummary:
    """Count blast-like cells, bound their fraction, and make the call.

    The call: INSUFFICIENT_CELLS below ``min_cells`` scored cells; else AML_SUSPECTED when the
    interval's lower bound is at or above ``blast_cutoff``, NOT_SUSPECTED when its upper bound
    is below it, INDETERMINATE otherwise. The interval is the exact (Clopper-Pearson) one.
    More than ``max_quarantined_share`` of the patient's inputs quarantined adds the
    ``high_quarantine_rate`` QC flag: the call stands, on the cells that were scored.

    Args:
        patient_id: the patient.
        probabilities: `(n_scored,)` blast probabilities of the patient's scored cells.
        n_quarantined: inputs of this patient that were quarantined.
        config: threshold, cut-off, minimum cells, interval level and largest quarantined share.
        model_version: the model that produced the probabilities.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    n_scored = int(probabilities.size)
    n_blast = int((probabilities >= config.threshold).sum())
    flags = []
    if n_scored:
        interval = binomtest(n_blast, n_scored).proportion_ci(config.confidence, method="exact")
        ci_low, ci_high = float(interval.low), float(interval.high)
        fraction = n_blast / n_scored
        mean, median = float(probabilities.mean()), float(np.median(probabilities))
    else:
        ci_low = ci_high = fraction = mean = median = float("nan")
        flags.append("no_scored_cells")
    if n_scored < config.min_cells:
        call = "INSUFFICIENT_CELLS"
        flags.append(f"fewer_than_{config.min_cells}_cells")
    elif ci_low >= config.blast_cutoff:
        call = "AML_SUSPECTED"
    elif ci_high < config.blast_cutoff:
        call = "NOT_SUSPECTED"
    else:
        call = "INDETERMINATE"
    n_cells = n_scored + int(n_quarantined)
    if n_cells and n_quarantined / n_cells > config.max_quarantined_share:
        flags.append("high_quarantine_rate")
    return PatientSummary(
        patient_id=patient_id,
        n_cells=n_cells,
        n_scored=n_scored,
        n_quarantined=int(n_quarantined),
        n_blast_like=n_blast,
        blast_fraction=fraction,
        ci_low=ci_low,
        ci_high=ci_high,
        mean_probability=mean,
        median_probability=median,
        call=call,
        qc_flags=";".join(flags),
        model_version=model_version,
        threshold=config.threshold,
        blast_cutoff=config.blast_cutoff,
        min_cells=config.min_cells,
        max_quarantined_share=config.max_quarantined_share,
    )


def summarise_cohort(
    cells: pd.DataFrame,
    quarantine: pd.DataFrame,
    config: SummaryConfig,
    model_version: str,
    extra_patients: tuple[str, ...] = (),
) -> pd.DataFrame:
    """Summaries of every patient that has cells, quarantined inputs, or is listed in ``extra_patients``.

    Args:
        cells: one row per scored cell with patient_id and probability.
        quarantine: one row per quarantined input with patient_id.
        config: the call rule.
        model_version: recorded in every row.
        extra_patients: patients known to exist without any input (empty folders).

    Returns:
        A new DataFrame with :data:`PATIENT_COLUMNS`, sorted by patient_id.
    """
    quarantined = quarantine["patient_id"].value_counts().to_dict() if len(quarantine) else {}
    return summarise_patients(cells, quarantined, config, model_version, extra_patients)


def summarise_patients(
    cells: pd.DataFrame,
    quarantined: Mapping[str, int],
    config: SummaryConfig,
    model_version: str,
    extra_patients: tuple[str, ...] = (),
) -> pd.DataFrame:
    """:func:`summarise_cohort` with the quarantine given as counts: ``quarantined`` maps a patient
    to its number of quarantined inputs."""
    by_patient = {
        pid: group["probability"].to_numpy()
        for pid, group in cells.groupby("patient_id", sort=True)
    }
    patients = sorted((set(by_patient) | set(quarantined) | set(extra_patients)) - {""})
    rows = [
        dataclasses.asdict(
            summarise_patient(
                pid,
                by_patient.get(pid, np.zeros(0)),
                quarantined.get(pid, 0),
                config,
                model_version,
            )
        )
        for pid in patients
    ]
    return pd.DataFrame(rows, columns=list(PATIENT_COLUMNS))


def rogan_gladen(
    observed: np.ndarray, sensitivity: float, false_positive_rate: float
) -> np.ndarray:
    """The true blast fraction estimated from an observed blast-like fraction (Rogan & Gladen, 1978).

    A patient with true blast fraction ``f`` shows ``f * se + (1 - f) * fpr`` blast-like cells in
    expectation; solved for ``f``: ``(observed - fpr) / (se - fpr)``, clipped to [0, 1]. Applied to
    the bounds of the observed fraction's interval, it gives an interval of the true fraction that
    takes ``se`` and ``fpr`` as known: it ignores their own uncertainty (they come from about 50
    labelled cells of each class), so it is narrower than the truth.

    Args:
        observed: `(n,)` blast-like fractions (or interval bounds) in [0, 1]; NaN stays NaN.
        sensitivity: the site's share of blasts that are blast-like at the threshold the cells were called at.
        false_positive_rate: the site's share of other cells that are blast-like there.

    Returns:
        `(n,)` float64 in [0, 1]; all NaN where ``sensitivity <= false_positive_rate`` (the calls then
        say nothing about blasts) or either rate is NaN.
    """
    observed = np.asarray(observed, np.float64)
    if not sensitivity > false_positive_rate:
        return np.full(observed.shape, np.nan)
    return np.clip((observed - false_positive_rate) / (sensitivity - false_positive_rate), 0.0, 1.0)


def with_corrected_fraction(
    patients: pd.DataFrame, sensitivity: float, false_positive_rate: float
) -> pd.DataFrame:
    """A new patient table with :data:`CORRECTED_COLUMNS` added after the site's rates (:func:`rogan_gladen`).

    Args:
        patients: a table with blast_fraction, ci_low and ci_high (:data:`PATIENT_COLUMNS`).
        sensitivity, false_positive_rate: the site's rates at the threshold of the calls.
    """
    return patients.assign(
        **{
            name: rogan_gladen(
                patients[column].to_numpy(np.float64), sensitivity, false_positive_rate
            )
            for name, column in zip(
                CORRECTED_COLUMNS, ("blast_fraction", "ci_low", "ci_high"), strict=True
            )
        }
    )
