import csv

import numpy as np
from PIL import Image

from aml_model.synthetic import SyntheticPatient, render_cell, write_synthetic_cohort


def dark_nucleus_fraction(image: np.ndarray) -> float:
    # Nuclei are the dark purple pixels: low green, red well above green.
    r, g = image[..., 0].astype(int), image[..., 1].astype(int)
    return float(((g < 110) & (r > g + 15)).mean())


def test_blast_like_cells_have_larger_nuclei_than_neutrophil_like_cells():
    rng = np.random.default_rng(0)
    blasts = [dark_nucleus_fraction(render_cell(True, rng)) for _ in range(20)]
    neutrophils = [dark_nucleus_fraction(render_cell(False, rng)) for _ in range(20)]
    assert min(blasts) > max(neutrophils)


def test_render_is_deterministic_and_sized():
    a = render_cell(True, np.random.default_rng(5), size=96)
    b = render_cell(True, np.random.default_rng(5), size=96)
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


def test_cohort_layout_labels_and_synthetic_marking(tmp_path):
    patients = (SyntheticPatient("A", "aml", 0.5), SyntheticPatient("H", "healthy", 0.0))
    root = write_synthetic_cohort(tmp_path / "cohort", patients, cells_per_patient=6, size=32)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["A", "H"]
    with open(root / "labels.csv", newline="") as handle:
        labels = list(csv.DictReader(handle))
    assert len(labels) == 12
    assert sum(r["label"] == "blast" for r in labels if r["image"].startswith("A/")) == 3
    assert all(r["label"] == "normal" for r in labels if r["image"].startswith("H/"))
    with open(root / "patients.csv", newline="") as handle:
        assert list(csv.DictReader(handle)) == [
            {"patient_id": "A", "diagnosis": "aml"},
            {"patient_id": "H", "diagnosis": "healthy"},
        ]
    assert "SYNTHETIC" in (root / "README.txt").read_text()
    with Image.open(root / labels[0]["image"]) as image:
        assert "SYNTHETIC" in image.info["Comment"]
    again = write_synthetic_cohort(tmp_path / "again", patients, cells_per_patient=6, size=32)
    assert (again / labels[0]["image"]).read_bytes() == (root / labels[0]["image"]).read_bytes()
