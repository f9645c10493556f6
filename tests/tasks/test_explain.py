from aml_model.report import legacy_report_name, report_name
from tasks.explain import EXPLAIN_MANIFEST, find_explanation
from tasks.store import Store, join


def manifest(store: Store, folder: str, patient_id: str) -> None:
    store.write_json(join(folder, EXPLAIN_MANIFEST), {"patient_id": patient_id, "cells": []})


def test_grad_cam_is_found_under_its_unique_name_or_an_old_scorings_shared_one_if_it_is_the_patients(
    tmp_path,
):
    paths = Store(str(tmp_path / "store")).run("run-1").scoring("v1-abc")
    assert find_explanation(paths, "P/1") is None

    # An old scoring: "P 1" and "P/1" shared the folder P_1, and "P 1" was written last.
    legacy = join(paths.root, "explain", legacy_report_name("P/1"))
    manifest(paths.store, legacy, "P 1")
    assert find_explanation(paths, "P 1") == legacy
    assert find_explanation(paths, "P/1") is None, (
        "another patient's overlays are never shown as this one's"
    )

    current = join(paths.root, "explain", report_name("P/1"))
    manifest(paths.store, current, "P/1")
    assert find_explanation(paths, "P/1") == current
