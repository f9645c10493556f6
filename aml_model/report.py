"""Per-patient HTML reports a hematologist can read, and the cohort index page.

Each report is one self-contained HTML file (images embedded as data URIs, no scripts, no
external resources), rendered from Jinja2 templates in ``aml_model/templates``: the call with
its interval and the rule that produced it, the counts, the QC flags, the patient's quarantined
inputs with their reasons, a histogram of the cell probabilities with the threshold marked, a
gallery of the most blast-like cells (each named by its file) with their Grad-CAM overlays, and the
model version with its test metrics.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from aml_model.aggregate import RESEARCH_NOTE
from aml_model.calibration import call_probabilities
from aml_model.evaluate import rates_by_group

__all__ = [
    "EXPLAINED_CALLS",
    "STEM_CHARACTERS",
    "GalleryCell",
    "ModelInfo",
    "PatientReport",
    "cell_type_rates",
    "describe_call",
    "encode_png",
    "legacy_report_name",
    "patients_to_explain",
    "render_cohort_index",
    "render_patient_report",
    "render_probability_histogram",
    "report_name",
    "top_cells",
]

# Grad-CAM is worth its cost where a hematologist has to check a positive or unclear call.
EXPLAINED_CALLS = ("AML_SUSPECTED", "INDETERMINATE")
METRIC_NAMES = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc")
_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True)
class GalleryCell:
    """One of a patient's most blast-like cells.

    Attributes:
        rank: 1 for the most blast-like cell.
        name: the cell's file, as a person finds it in the source (its path there).
        probability: its blast probability in [0, 1].
        cell_png: the cell as the model saw it, PNG bytes.
        overlay_png: its Grad-CAM overlay, PNG bytes; None where Grad-CAM was not computed.
    """

    rank: int
    name: str
    probability: float
    cell_png: bytes
    overlay_png: bytes | None


@dataclass(frozen=True)
class ModelInfo:
    """The model behind the scores: its version and, when registered, its test metrics.

    Attributes:
        version: registry version, or ``file-<hash>`` for a bare .keras file.
        metrics: test-set metrics from the model card (keys as ``BinaryMetrics.to_dict``), or
            None when there is no model card.
    """

    version: str
    metrics: dict | None


@dataclass(frozen=True)
class PatientReport:
    """Everything one patient's report shows.

    Attributes:
        run_id: the scoring run.
        summary: the patient's row of patients.parquet (see ``aml_model.aggregate.PATIENT_COLUMNS``).
        probabilities: `(n_scored,)` float blast probabilities of the patient's cells.
        gallery: the most blast-like cells, most blast-like first.
        explained: whether Grad-CAM overlays were computed for this patient.
        model: the model that scored the cells.
        cell_types: per-type rows of :func:`cell_type_rates` (cell_type, n, blast_like_rate...);
            empty when no cell's type is known.
        quarantined: the patient's quarantined inputs, each a dict of name and reason.
    """

    run_id: str
    summary: dict
    probabilities: np.ndarray
    gallery: tuple[GalleryCell, ...]
    explained: bool
    model: ModelInfo
    cell_types: tuple[dict, ...] = ()
    quarantined: tuple[dict, ...] = ()


#: Characters of an id kept in its file name stem; the hash after it keeps the name unique.
STEM_CHARACTERS = 48


def legacy_report_name(patient_id: str) -> str:
    """The stem reports and Grad-CAM folders had before :func:`report_name` (``P/1`` and ``P 1`` were
    both ``P_1``): only for finding the Grad-CAM of scorings made then."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", patient_id).lstrip(".") or "_"


def report_name(patient_id: str) -> str:
    """A file-name-safe stem for a patient's report and Grad-CAM folder, unique to the exact id.

    Ids may hold any character: the readable part keeps letters, digits, ``.``, ``_`` and ``-``
    (others become ``_``, at most :data:`STEM_CHARACTERS` of them), and the first 10 hex digits of
    the id's sha256 follow, so ``P/1``, ``P 1`` and ``P_1`` get three names (``P_1-<hash>``).
    """
    digest = hashlib.sha256(patient_id.encode("utf-8")).hexdigest()[:10]
    return f"{legacy_report_name(patient_id)[:STEM_CHARACTERS]}-{digest}"


def patients_to_explain(
    patients: pd.DataFrame, calls: tuple[str, ...] = EXPLAINED_CALLS
) -> list[str]:
    """Ids of the patients whose call is in ``calls`` and who have scored cells, in table order."""
    chosen = patients[patients["call"].isin(calls) & (patients["n_scored"] > 0)]
    return chosen["patient_id"].tolist()


def top_cells(cells: pd.DataFrame, patient_id: str, k: int) -> pd.DataFrame:
    """The ``k`` most blast-like cells of a patient, highest probability first (ties: by cell_id).

    Args:
        cells: the scored cell table (patient_id, cell_id, zarr_index, probability).
        patient_id: the patient.
        k: how many cells, >= 1.

    Returns:
        A new DataFrame of at most ``k`` rows.
    """
    if k < 1:
        message = f"k={k} is invalid: expected at least 1 cell"
        raise ValueError(message)
    mine = cells[cells["patient_id"] == patient_id]
    return (
        mine.sort_values(["probability", "cell_id"], ascending=[False, True])
        .head(k)
        .reset_index(drop=True)
    )


def cell_type_rates(cells: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Blast-like rate per cell type of scored cells (``evaluate.rates_by_group`` by cell_type).

    Args:
        cells: scored cells (probability; cell_type and label where present).
        threshold: a cell with probability >= threshold is blast-like.

    Returns:
        One row per type (cells without a type: "unknown"), with cell_type, n, n_blast,
        blast_like, blast_like_rate and roc_auc; no rows when no cell's type is known.
    """
    if "cell_type" not in cells or not cells["cell_type"].notna().any():
        return pd.DataFrame(
            columns=["cell_type", "n", "n_blast", "blast_like", "blast_like_rate", "roc_auc"]
        )
    return rates_by_group(cells, call_probabilities(cells), threshold, by=["cell_type"])


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an `(h, w, 3)` uint8 RGB image, lossless."""
    buffer = io.BytesIO()
    # zlib level 1: a 224 px cell encodes in 4 ms instead of Pillow's default level 6's 22 ms,
    # for files 14% larger; the reports' galleries encode a dozen cells per patient.
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def render_probability_histogram(probabilities: np.ndarray, threshold: float) -> bytes:
    """Histogram of a patient's cell probabilities (20 bins on [0, 1]), the threshold marked.

    Args:
        probabilities: `(n,)` blast probabilities in [0, 1]; may be empty.
        threshold: the probability at which a cell is blast-like.

    Returns:
        PNG bytes.
    """
    # A Figure of its own, not pyplot's global state: a worker renders patients on several threads.
    fig = Figure(figsize=(6, 2.8))
    ax = fig.subplots()
    bins = np.linspace(0.0, 1.0, 21)
    values = np.asarray(probabilities, dtype=np.float64)
    ax.hist(values[values < threshold], bins=bins, color="#4c72b0", label="below threshold")
    ax.hist(values[values >= threshold], bins=bins, color="#c44e52", label="blast-like")
    ax.axvline(
        threshold, color="black", linestyle="--", linewidth=1.2, label=f"threshold {threshold:g}"
    )
    if values.size == 0:
        ax.text(0.5, 0.5, "no scored cells", ha="center", va="center", transform=ax.transAxes)
    ax.set(
        xlim=(0, 1),
        xlabel="blast probability",
        ylabel="cells",
        title=f"Cell probabilities (n = {values.size})",
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _percent(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.1%}"


def _probability(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def describe_call(summary: dict) -> str:
    """One sentence stating the rule that produced the patient's call (see ``summarise_patient``)."""
    call, cutoff = summary["call"], f"{summary['blast_cutoff']:.0%}"
    interval = f"{_percent(summary['ci_low'])}-{_percent(summary['ci_high'])}"
    if call == "INSUFFICIENT_CELLS":
        return (
            f"{summary['n_scored']} cells were scored, fewer than the minimum of {summary['min_cells']}: "
            f"too few for a call."
        )
    if call == "AML_SUSPECTED":
        return (
            f"The lower bound of the 95% interval of the blast-like fraction ({_percent(summary['ci_low'])}) "
            f"is at or above the blast cut-off of {cutoff}."
        )
    if call == "NOT_SUSPECTED":
        return (
            f"The upper bound of the 95% interval of the blast-like fraction ({_percent(summary['ci_high'])}) "
            f"is below the blast cut-off of {cutoff}."
        )
    return f"The 95% interval of the blast-like fraction ({interval}) contains the blast cut-off of {cutoff}."


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


_TEMPLATES.filters["data_uri"] = _data_uri
_TEMPLATES.filters["percent"] = _percent
_TEMPLATES.filters["probability"] = _probability


def _flags(summary: dict) -> list[str]:
    return [flag for flag in (summary.get("qc_flags") or "").split(";") if flag]


def render_patient_report(report: PatientReport) -> str:
    """The patient's report as one self-contained HTML document (a str)."""
    summary = report.summary
    histogram = render_probability_histogram(report.probabilities, float(summary["threshold"]))
    metrics = (
        None
        if report.model.metrics is None
        else [
            (name, report.model.metrics[name])
            for name in METRIC_NAMES
            if name in report.model.metrics
        ]
    )
    return _TEMPLATES.get_template("patient_report.html.j2").render(
        run_id=report.run_id,
        s=summary,
        rule=describe_call(summary),
        flags=_flags(summary),
        histogram=histogram,
        gallery=report.gallery,
        explained=report.explained,
        explained_calls=EXPLAINED_CALLS,
        model=report.model,
        metrics=metrics,
        cell_types=report.cell_types,
        quarantined=report.quarantined,
        n_test=(report.model.metrics or {}).get("n"),
        note=RESEARCH_NOTE,
    )


def render_cohort_index(
    run_id: str,
    patients: pd.DataFrame,
    model: ModelInfo,
    cell_types: tuple[dict, ...] = (),
    links_note: str | None = None,
) -> str:
    """The cohort index page: one row per patient linking to its report (``<report_name>.html``).

    Args:
        run_id: the scoring run.
        patients: patients.parquet of the run.
        model: the model that scored the cells.
        cell_types: per-type rows of :func:`cell_type_rates` over the run; none shown when empty.
        links_note: a line under the title on where the relative links open (object stores).
    """
    rows = [
        {**row, "flags": _flags(row), "href": f"{report_name(row['patient_id'])}.html"}
        for row in patients.to_dict(orient="records")
    ]
    counts = patients["call"].value_counts().to_dict()
    return _TEMPLATES.get_template("cohort_index.html.j2").render(
        run_id=run_id,
        rows=rows,
        model=model,
        counts=counts,
        note=RESEARCH_NOTE,
        cell_types=cell_types,
        links_note=links_note,
    )
