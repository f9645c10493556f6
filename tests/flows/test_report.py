"""Reports of a scored cohort: Grad-CAM on the workers, one HTML page per patient, the index, the CLI rebuild."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from prefect.artifacts import Artifact
from prefect_dask import DaskTaskRunner

from aml_model.aggregate import RESEARCH_NOTE
from aml_model.report import EXPLAINED_CALLS, report_name
from app.cli import cli
from flows.parameters import ScoreOptions
from flows.score import score_smears
from tasks.store import Store, join
from tests.corpus import compose_patient_cohort
from tests.report_checks import chromium, embedded_pngs, is_blank, parse_page, screenshot

TOP_K = 4
METRICS = {
    "n": 24,
    "threshold": 0.5,
    "accuracy": 0.875,
    "sensitivity": 0.8,
    "specificity": 0.9,
    "precision": 0.9,
    "f1": 0.85,
    "roc_auc": 0.93,
    "tn": 9,
    "fp": 1,
    "fn": 2,
    "tp": 12,
}


@pytest.fixture(scope="module")
def scored_run(lmu_cells, tmp_path_factory, dask_cluster, tiny_model_file):
    """A cohort scored by a registered champion with a model card: all blasts, all normal, too few cells
    (and one broken file)."""
    from tasks.registry import register_model, set_champion

    root = tmp_path_factory.mktemp("reports")
    store = str(root / "store")
    ref = register_model(
        str(tiny_model_file),
        {"config": {"model": {"image_size": 32}}, "metrics": METRICS},
        Store(store),
    )
    set_champion(Store(store), ref.version)
    source = compose_patient_cohort(
        lmu_cells, root / "cohort", {"A": (16, 0), "B": (0, 16), "C": (2, 3)}
    )
    (source / "C" / "broken.jpg").write_bytes(b"")
    runner = DaskTaskRunner(address=dask_cluster.scheduler_address)
    result = score_smears.with_options(task_runner=runner)(
        source=str(source),
        store=store,
        options=ScoreOptions(min_cells=10, chunk_cells=16, explain_top_k=TOP_K),
    )
    return result, Store(store).run(result["run_id"]).scoring(result["score_id"]), root


def test_every_patient_gets_a_self_contained_report(scored_run):
    result, paths, _ = scored_run
    calls = {row["patient_id"]: row["call"] for row in result["patients"]}
    assert calls["C"] == "INSUFFICIENT_CELLS"
    explained = {pid for pid, call in calls.items() if call in EXPLAINED_CALLS}
    assert explained, f"the cohort must have a patient to explain: {calls}"
    assert result["report"] == join(paths.root, "reports", "index.html")
    for patient_id, call in calls.items():
        html = paths.store.read_bytes(
            join(paths.root, "reports", f"{report_name(patient_id)}.html")
        ).decode()
        page = parse_page(html)
        n_cells = 5 if patient_id == "C" else 16
        gallery = min(TOP_K, n_cells) * (2 if patient_id in explained else 1)
        assert len(embedded_pngs(page)) == 1 + gallery, (
            "the histogram, each cell, and its overlay if explained"
        )
        assert f"Patient {patient_id}" in page.text and call in page.text
        assert (
            result["model_version"] in page.text and "roc_auc" in page.text and "0.930" in page.text
        )
        assert RESEARCH_NOTE in page.text.lower()
        folder = join(paths.root, "explain", report_name(patient_id))
        if patient_id in explained:
            names = [
                cell["overlay"]
                for cell in paths.store.read_json(join(folder, "gradcam.json"))["cells"]
            ]
            assert len(names) == TOP_K and all(
                paths.store.exists(join(folder, name)) for name in names
            )
        else:
            assert not paths.store.exists(folder), (
                "Grad-CAM only for AML_SUSPECTED and INDETERMINATE calls"
            )
    index = parse_page(paths.store.read_bytes(result["report"]).decode())
    assert index.links == [f"{report_name(pid)}.html" for pid in sorted(calls)]
    assert "presigned link" not in index.text, "a local store's index opens its links as they are"
    artifact = Artifact.get("patient-reports")
    assert (
        artifact is not None
        and "index.html" in artifact.data
        and f"{report_name('A')}.html" in artifact.data
    )


def test_reports_name_each_cell_by_its_file_and_list_the_patients_quarantined_files(scored_run):
    _, paths, root = scored_run
    for patient_id in "ABC":
        html = paths.store.read_bytes(
            join(paths.root, "reports", f"{report_name(patient_id)}.html")
        ).decode()
        names = re.findall(r'<div class="id">([^<]*)</div>', html)
        # Each gallery cell is labelled by its path in the source, a file a hematologist can open.
        assert len(names) == min(TOP_K, 5 if patient_id == "C" else 16), html
        assert all(
            name.startswith(f"{patient_id}/") and (root / "cohort" / name).is_file()
            for name in names
        ), names
        text = parse_page(html).text
        if patient_id == "C":
            assert "quarantined file reason C/broken.jpg empty file (0 bytes)" in text
            assert (
                "1 of 6 inputs (16.7%) were quarantined" in text and "high_quarantine_rate" in text
            )
        else:
            assert "broken.jpg" not in text and "quarantined file" not in text


def test_grad_cam_overlays_are_pngs_on_the_store(scored_run):
    result, paths, _ = scored_run
    explained = [row["patient_id"] for row in result["patients"] if row["call"] in EXPLAINED_CALLS]
    folder = join(paths.root, "explain", report_name(explained[0]))
    manifest = paths.store.read_json(join(folder, "gradcam.json"))
    assert [cell["rank"] for cell in manifest["cells"]] == list(range(1, TOP_K + 1))
    probabilities = [cell["probability"] for cell in manifest["cells"]]
    assert probabilities == sorted(probabilities, reverse=True)
    png = paths.store.read_bytes(join(folder, manifest["cells"][0]["overlay"]))
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (32, 32) and image.mode == "RGB"
    progress = Artifact.get("explain-progress")
    assert (
        float(progress.data) == 100.0
        and progress.description == f"Grad-CAM of scoring {result['score_id']}"
    )


def test_report_renders_in_headless_chromium(scored_run):
    _, paths, root = scored_run
    executable = chromium()
    if executable is None:
        pytest.skip(
            "chromium is not installed (apt-get install chromium): the HTML was checked with html.parser only"
        )
    page = Path(paths.root) / "reports" / f"{report_name('A')}.html"
    image = screenshot(executable, page, root / "A.png", root / "chromium-profile")
    assert image.size == (1200, 1600) and not is_blank(image)


def test_cli_rebuilds_the_reports_of_a_complete_run_only(scored_run):
    _, paths, root = scored_run
    store = str(root / "store")
    paths.store.remove(join(paths.root, "reports"), recursive=True)
    rebuilt = CliRunner().invoke(cli, ["report", paths.run_id, "--store", store])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert f"reports of run {paths.run_id}, scoring {paths.score_id} rebuilt" in rebuilt.output
    assert paths.store.exists(join(paths.root, "reports", "index.html"))
    assert all(
        paths.store.exists(join(paths.root, "reports", f"{report_name(pid)}.html")) for pid in "ABC"
    )

    paths.store.remove(paths.success)
    refused = CliRunner().invoke(
        cli, ["report", paths.run_id, "--store", store, "--score", paths.score_id]
    )
    assert refused.exit_code == 1 and "is incomplete (no _SUCCESS)" in refused.output
    latest = CliRunner().invoke(cli, ["report", paths.run_id, "--store", store])
    assert latest.exit_code == 1 and "has only incomplete scorings" in latest.output
    missing = CliRunner().invoke(cli, ["report", "no-such-run", "--store", store])
    assert missing.exit_code == 1 and "no run no-such-run" in missing.output


def test_patients_whose_ids_share_a_file_name_stem_get_a_report_and_grad_cam_each(
    lmu_cells, tmp_path, dask_cluster, tiny_model_file
):
    """``P/1``, ``P 1`` and ``P_1`` (a manifest may name patients so) once shared ``P_1.html``."""
    import csv

    from tests.corpus import lmu_rows

    blasts = [row["file"] for row in lmu_rows(lmu_cells) if row["label"] == "blast"]
    patients = ["P/1", "P 1", "P_1"]
    entries = []
    for number, patient_id in enumerate(patients):
        for file in blasts[number * 12 : (number + 1) * 12]:
            name = f"cells/{number}-{Path(file).name}"
            (tmp_path / "cohort" / "cells").mkdir(parents=True, exist_ok=True)
            (tmp_path / "cohort" / name).write_bytes((lmu_cells / file).read_bytes())
            entries.append({"image_uri": name, "patient_id": patient_id})
    with open(tmp_path / "cohort" / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["image_uri", "patient_id"])
        writer.writeheader()
        writer.writerows(entries)
    store = str(tmp_path / "store")
    result = score_smears.with_options(
        task_runner=DaskTaskRunner(address=dask_cluster.scheduler_address)
    )(
        source=str(tmp_path / "cohort" / "manifest.csv"),
        store=store,
        options=ScoreOptions(
            model=str(tiny_model_file),
            min_cells=10,
            chunk_cells=16,
            explain_top_k=2,
            layout="manifest",
        ),
    )
    paths = Store(store).run(result["run_id"]).scoring(result["score_id"])
    calls = {row["patient_id"]: row["call"] for row in result["patients"]}
    assert sorted(calls) == sorted(patients) and all(
        call in EXPLAINED_CALLS for call in calls.values()
    ), calls
    reports = sorted((Path(paths.root) / "reports").glob("*.html"))
    assert len(reports) == 4, "three patients and the index"
    for report in (r for r in reports if r.name != "index.html"):
        owners = [
            pid for pid in patients if f"Patient {pid}" in parse_page(report.read_text()).text
        ]
        assert len(owners) == 1, (report.name, owners)
    index = parse_page(paths.store.read_bytes(result["report"]).decode())
    assert len(set(index.links)) == 3 and set(index.links) <= {r.name for r in reports}
    owners = [
        paths.store.read_json(str(folder / "gradcam.json"))["patient_id"]
        for folder in (Path(paths.root) / "explain").iterdir()
    ]
    assert sorted(owners) == sorted(patients), "three Grad-CAM folders, each with its own patient"


def test_report_refuses_a_run_or_scoring_name_that_leaves_the_store(scored_run):
    import shutil

    _, paths, root = scored_run
    # A complete run beside the store's runs/ folder, where "../x" would reach it, without reports.
    outside = root / "store" / "x"
    shutil.copytree(paths.ingest.root, outside)
    shutil.rmtree(outside / "scores" / paths.score_id / "reports")
    for name, argv in (
        ("run id '../x'", ["report", "../x"]),
        ("score id '../../x'", ["report", paths.run_id, "--score", "../../x"]),
    ):
        refused = CliRunner().invoke(cli, [*argv, "--store", str(root / "store")])
        assert refused.exit_code == 1 and refused.output.startswith(f"error: {name} is not one"), (
            refused.output
        )
    assert not (outside / "scores" / paths.score_id / "reports").exists(), (
        "nothing written outside runs/"
    )
