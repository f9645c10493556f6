import json

import numpy as np
import pytest
from scipy.special import expit

from aml_model.calibration import fit_site_calibration
from aml_model.errors import ConfigError
from tasks.calibration import (
    CalibrationNotFoundError,
    calibrated_versions,
    calibration_markdown,
    list_sites,
    read_site_calibration,
    save_site_calibration,
    site_calibration_url,
)
from tasks.registry import ModelNotFoundError
from tasks.store import Store


def registered(store, version):
    """A registered version as far as the registry's files go (card written last)."""
    store.write_bytes(store.path("models", version, "model.keras"), b"model")
    store.write_json(
        store.path("models", version, "model_card.json"),
        {"config": {"model": {"image_size": 32}}, "version": version},
    )


def calibration_for(version, site="lab-a", shift=-1.0):
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(30), np.zeros(40)].astype(int)
    p = expit(np.where(y == 1, 1.0, -1.0) + rng.normal(size=y.size) + shift)
    return fit_site_calibration(y, p, site, version)


def test_a_calibration_is_stored_next_to_its_model_and_read_back(tmp_path):
    store = Store(str(tmp_path / "store"))
    registered(store, "v1")
    calibration = calibration_for("v1")
    url = save_site_calibration(calibration, store)
    assert url == str(tmp_path / "store" / "models" / "v1" / "sites" / "lab-a.json")
    data = json.loads((tmp_path / "store" / "models" / "v1" / "sites" / "lab-a.json").read_text())
    assert (data["site"], data["model_version"], data["n_blast"], data["n_other"]) == (
        "lab-a",
        "v1",
        30,
        40,
    )
    assert read_site_calibration(store, "lab-a", "v1") == calibration
    save_site_calibration(calibration_for("v1", site="lab_b"), store)
    assert list_sites(store, "v1") == ["lab-a", "lab_b"]
    assert list_sites(store, "v2") == []
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in (tmp_path / "store" / "models" / "v1" / "sites").iterdir()) == [
        "lab-a.json",
        "lab_b.json",
    ]


def test_a_site_calibrated_for_another_version_is_refused_with_both_versions_named(tmp_path):
    store = Store(str(tmp_path / "store"))
    registered(store, "v1")
    registered(store, "v2")
    save_site_calibration(calibration_for("v1"), store)
    assert calibrated_versions(store, "lab-a") == ["v1"]
    with pytest.raises(
        CalibrationNotFoundError,
        match=r"site lab-a has no calibration for model v2 \(it was calibrated for model v1\); "
        r"run `aml-smear calibrate .* --site lab-a` again",
    ):
        read_site_calibration(store, "lab-a", "v2")
    with pytest.raises(
        CalibrationNotFoundError,
        match="site lab-z has no calibration for model v1 .*has no calibration",
    ):
        read_site_calibration(store, "lab-z", "v1")


def test_a_bare_model_file_or_a_bad_site_name_is_refused(tmp_path):
    store = Store(str(tmp_path / "store"))
    with pytest.raises(ModelNotFoundError, match="not registered"):
        save_site_calibration(calibration_for("file-0123456789ab"), store)
    assert not (tmp_path / "store").exists()
    with pytest.raises(ConfigError, match="site name"):
        site_calibration_url(store, "v1", "../../escape")
    with pytest.raises(ConfigError, match="site name"):
        read_site_calibration(store, "a/b", "v1")


def test_the_artifact_states_the_fit_and_the_figures_before_and_after():
    calibration = calibration_for("v1")
    lines = calibration_markdown(calibration, "/store/models/v1/sites/lab-a.json").splitlines()
    assert lines[0] == "# Site calibration: lab-a"
    assert f"{calibration.slope:.3f} x logit(p) + {calibration.intercept:.3f}" in lines[2]
    assert (
        "Fitted on 30 blast and 40 other labelled cells (the figures below are on those same cells)."
        in lines
    )
    before, after = calibration.before, calibration.after
    assert (
        f"| before (raw) | {before.accuracy:.3f} | {before.sensitivity:.3f} | {before.specificity:.3f} |"
        f" {before.roc_auc:.3f} | {before.threshold:g} |" in lines
    )
    assert (
        f"| after (calibrated) | {after.accuracy:.3f} | {after.sensitivity:.3f} | {after.specificity:.3f} |"
        f" {after.roc_auc:.3f} | {after.threshold:g} |" in lines
    )
    fraction, balanced = (
        calibration.operating_point("fraction"),
        calibration.operating_point("balanced"),
    )
    assert any(
        line.startswith(f"| after (fraction point) | {fraction.metrics.accuracy:.3f} |")
        for line in lines
    )
    assert "## Operating points: the blast-like fraction of a patient with 20% blasts" in lines
    bias = 0.2 * balanced.sensitivity + 0.8 * balanced.false_positive_rate - 0.2
    assert (
        f"| balanced | 0.500 | {calibration.raw_threshold:.3f} | {balanced.sensitivity:.3f} | "
        f"{balanced.false_positive_rate:.3f} | {0.2 + bias:.1%} | {bias:+.3f} |"
    ) in lines
    (row,) = [line for line in lines if line.startswith("| fraction |")]
    assert row.startswith(
        f"| fraction | {fraction.threshold:.3f} | {calibration.to_raw(fraction.threshold):.3f} | "
        f"{fraction.sensitivity:.3f} | {fraction.false_positive_rate:.3f} | "
    )
    assert row.endswith(" | 20.0% | +0.000 |"), "unbiased at the cut-off by construction"
    assert lines[-1] == "Stored at `/store/models/v1/sites/lab-a.json`."
