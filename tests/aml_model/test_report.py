import hashlib
import io
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from aml_model.aggregate import RESEARCH_NOTE, summarise_cohort
from aml_model.config import SummaryConfig
from aml_model.report import (
    STEM_CHARACTERS,
    GalleryCell,
    ModelInfo,
    PatientReport,
    cell_type_rates,
    describe_call,
    encode_png,
    patients_to_explain,
    render_cohort_index,
    render_patient_report,
    render_probability_histogram,
    report_name,
    top_cells,
)
from tests.report_checks import embedded_pngs, parse_page

METRICS = {
    "n": 40,
    "threshold": 0.5,
    "accuracy": 0.9,
    "sensitivity": 0.85,
    "specificity": 0.95,
    "precision": 0.9,
    "f1": 0.87,
    "roc_auc": 0.97,
    "tn": 19,
    "fp": 1,
    "fn": 3,
    "tp": 17,
}


@pytest.fixture
def cohort():
    """Scored cells of four patients: AML_SUSPECTED, NOT_SUSPECTED, INDETERMINATE, INSUFFICIENT_CELLS."""
    probabilities = {
        "AML-1": [0.9] * 12 + [0.1] * 8,
        "HLT/2": [0.1] * 20,
        "MID-3": [0.9] * 4 + [0.1] * 16,
        "FEW-4": [0.8] * 3,
    }
    cells = pd.DataFrame(
        [
            {"cell_id": f"{pid}:{i:04x}", "patient_id": pid, "zarr_index": n, "probability": p}
            for n, (pid, i, p) in enumerate(
                (pid, i, p) for pid, ps in probabilities.items() for i, p in enumerate(ps)
            )
        ]
    )
    quarantine = pd.DataFrame({"patient_id": ["FEW-4"]})
    patients = summarise_cohort(cells, quarantine, SummaryConfig(min_cells=10), "v-test")
    return cells, patients.set_index("patient_id", drop=False)


def test_the_calls_to_explain_are_the_suspected_and_indeterminate(cohort):
    _, patients = cohort
    assert patients["call"].to_dict() == {
        "AML-1": "AML_SUSPECTED",
        "FEW-4": "INSUFFICIENT_CELLS",
        "HLT/2": "NOT_SUSPECTED",
        "MID-3": "INDETERMINATE",
    }
    assert patients_to_explain(patients) == ["AML-1", "MID-3"]


def test_top_cells_are_the_most_blast_like_first(cohort):
    cells, _ = cohort
    top = top_cells(cells, "MID-3", 6)
    assert top["probability"].tolist() == [0.9] * 4 + [0.1] * 2
    assert (top["patient_id"] == "MID-3").all() and top["cell_id"].iloc[:4].is_monotonic_increasing
    assert len(top_cells(cells, "FEW-4", 12)) == 3
    with pytest.raises(ValueError, match="k=0 is invalid"):
        top_cells(cells, "MID-3", 0)


def test_each_call_states_the_rule_that_produced_it(cohort):
    _, patients = cohort
    rules = {pid: describe_call(row) for pid, row in patients.to_dict(orient="index").items()}
    assert (
        "lower bound" in rules["AML-1"] and "at or above the blast cut-off of 20%" in rules["AML-1"]
    )
    assert "upper bound" in rules["HLT/2"] and "below the blast cut-off of 20%" in rules["HLT/2"]
    assert "contains the blast cut-off" in rules["MID-3"]
    assert "fewer than the minimum of 10" in rules["FEW-4"]


def test_report_names_are_safe_file_names_unique_to_the_exact_id():
    assert report_name("HLT/2") == "HLT_2-" + hashlib.sha256(b"HLT/2").hexdigest()[:10]
    assert report_name("../x y").startswith("_x_y-") and report_name("P-01.a").startswith("P-01.a-")
    names = [report_name(patient_id) for patient_id in ("P/1", "P 1", "P_1", "p_1")]
    assert len(set(names)) == 4 and all(
        re.fullmatch(r"[Pp]_1-[0-9a-f]{10}", name) for name in names
    )
    assert len(report_name("x" * 300)) == STEM_CHARACTERS + 11, "long ids keep file names short"


def test_histogram_is_a_png():
    image = Image.open(io.BytesIO(render_probability_histogram(np.linspace(0, 1, 50), 0.5)))
    assert image.format == "PNG" and image.width > 300
    assert Image.open(io.BytesIO(render_probability_histogram(np.zeros(0), 0.5))).format == "PNG"


def test_patient_report_is_one_self_contained_page(cohort):
    cells, patients = cohort
    rng = np.random.default_rng(0)
    gallery = tuple(
        GalleryCell(
            rank=i + 1,
            name=f"AML-1/slide 2/cell_{i:03d}.jpg",
            probability=0.9,
            cell_png=encode_png(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)),
            overlay_png=encode_png(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)),
        )
        for i in range(3)
    )
    probabilities = cells.loc[cells["patient_id"] == "AML-1", "probability"].to_numpy()
    html = render_patient_report(
        PatientReport(
            "run-1",
            patients.loc["AML-1"].to_dict(),
            probabilities,
            gallery,
            True,
            ModelInfo("v-test", METRICS),
        )
    )
    page = parse_page(html)
    assert len(embedded_pngs(page)) == 1 + 2 * 3, "the histogram, and each cell with its overlay"
    assert "http" not in html and "<script" not in html, "nothing to fetch, nothing to run"
    assert "Patient AML-1" in page.text and "AML_SUSPECTED" in page.text and "Grad-CAM" in page.text
    assert (
        "blast-like fraction 60.0% (95% interval" in page.text
        and describe_call(patients.loc["AML-1"]) in page.text
    )
    assert "v-test" in page.text and "roc_auc" in page.text and "0.970" in page.text
    assert RESEARCH_NOTE in page.text.lower()
    # Each cell of the gallery is named by its file, which a hematologist can open.
    assert all(f"AML-1/slide 2/cell_{i:03d}.jpg" in page.text for i in range(3))
    assert "quarantined file" not in page.text, "nothing quarantined: no list"


def test_report_lists_the_patients_quarantined_files_with_reasons(cohort):
    _, patients = cohort
    lost = ({"name": "FEW-4/broken.jpg", "reason": "empty file (0 bytes)"},)
    html = render_patient_report(
        PatientReport(
            "run-1",
            patients.loc["FEW-4"].to_dict(),
            np.array([0.8] * 3),
            (),
            False,
            ModelInfo("v", None),
            quarantined=lost,
        )
    )
    text = parse_page(html).text
    assert "quarantined file reason FEW-4/broken.jpg empty file (0 bytes)" in text
    # 1 of 4 inputs lost: flagged, and the report says at what share the flag is raised.
    assert "high_quarantine_rate" in text and "1 of 4 inputs (25.0%) were quarantined" in text
    assert "raised above 2.0% of the inputs" in text


def test_report_without_model_card_or_grad_cam_says_so(cohort):
    cells, patients = cohort
    html = render_patient_report(
        PatientReport(
            "run-1",
            patients.loc["FEW-4"].to_dict(),
            np.array([0.8] * 3),
            (),
            False,
            ModelInfo("file-0123456789ab", None),
        )
    )
    page = parse_page(html)
    assert "No model card" in page.text and "file-0123456789ab" in page.text
    assert "fewer_than_10_cells" in page.text and "INSUFFICIENT_CELLS" in page.text
    assert "Grad-CAM is computed only for AML_SUSPECTED and INDETERMINATE calls" in page.text
    assert len(embedded_pngs(page)) == 1


def test_index_links_every_patient_report(cohort):
    _, patients = cohort
    page = parse_page(
        render_cohort_index("run-1", patients.reset_index(drop=True), ModelInfo("v-test", METRICS))
    )
    assert page.links == [
        f"{report_name(pid)}.html" for pid in ("AML-1", "FEW-4", "HLT/2", "MID-3")
    ]
    assert (
        "AML_SUSPECTED: 1" in page.text
        and RESEARCH_NOTE in page.text.lower()
        and "v-test" in page.text
    )


def test_cell_type_rates_and_their_tables_in_the_report_and_index(cohort):
    cells, patients = cohort
    assert cell_type_rates(cells, 0.5).empty, "no cell_type column: no per-type rates"
    untyped = cells.assign(cell_type=pd.Series([None] * len(cells), dtype="string"))
    assert cell_type_rates(untyped, 0.5).empty, "no known type: no per-type rates"
    # AML-1: 12 cells at 0.9 then 8 at 0.1; the first 10 are myeloblasts, the next 6 neutrophils, 4 untyped.
    mine = cells[cells["patient_id"] == "AML-1"].assign(
        cell_type=["myeloblast"] * 10 + ["neutrophil"] * 6 + [None] * 4
    )
    rates = cell_type_rates(mine, 0.5)
    assert rates[["cell_type", "n", "blast_like"]].values.tolist() == [
        ["myeloblast", 10, 10],
        ["neutrophil", 6, 2],
        ["unknown", 4, 0],
    ]
    assert rates["blast_like_rate"].tolist() == pytest.approx([1.0, 2 / 6, 0.0])
    rows = tuple(rates.to_dict(orient="records"))
    summary, probabilities, model = (
        patients.loc["AML-1"].to_dict(),
        mine["probability"].to_numpy(),
        ModelInfo("v", None),
    )
    html = render_patient_report(
        PatientReport("run-1", summary, probabilities, (), False, model, cell_types=rows)
    )
    text = parse_page(html).text
    assert "Cell types" in text
    assert (
        "myeloblast 10 100.0%" in text and "neutrophil 6 33.3%" in text and "unknown 4 0.0%" in text
    )
    plain = render_patient_report(PatientReport("run-1", summary, probabilities, (), False, model))
    assert "Cell types" not in parse_page(plain).text
    index = parse_page(
        render_cohort_index(
            "run-1", patients.reset_index(drop=True), ModelInfo("v-test", METRICS), cell_types=rows
        )
    ).text
    assert "Cell types" in index and "neutrophil 6 33.3%" in index
