import os
import signal

import pandas as pd
import pytest

from tasks.discover import NoImagesError, discover, input_name, require_images
from tasks.store import Store
from tests.conftest import upload_folder
from tests.corpus import compose_class_source, compose_patient_cohort, write_bad_corpus


def test_lmu_folder_is_detected_as_class_layout(lmu_cells):
    found = discover(Store(str(lmu_cells)))
    assert found.layout == "class"
    assert len(found.inputs) == 1400
    assert {c.patient_id for c in found.inputs} == {"lmu-cells"}
    by_label = pd.Series([c.label for c in found.inputs]).value_counts().to_dict()
    assert by_label == {"blast": 700, "normal": 700}
    assert all(("/MYO/" in c.uri) == (c.label == "blast") for c in found.inputs)
    assert sorted(p.rsplit("/", 1)[-1] for p in found.ignored) == ["README.md", "labels.csv"]


def test_patient_layout_with_labels_diagnoses_and_empty_folders(lmu_cells, tmp_path):
    root = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (2, 1), "B": (0, 2)})
    (root / "patients.csv").write_text("patient_id,diagnosis\nA,aml\nB,healthy\n")
    (root / "C").mkdir()
    found = discover(Store(str(root)))
    assert found.layout == "patient"
    assert [c.patient_id for c in found.inputs] == ["A", "A", "A", "B", "B"]
    assert sorted((c.patient_id, c.label) for c in found.inputs) == [
        ("A", "blast"),
        ("A", "blast"),
        ("A", "normal"),
        ("B", "normal"),
        ("B", "normal"),
    ]
    assert found.empty_patients == ["C"]
    assert found.diagnoses == {"A": "aml", "B": "healthy"}


@pytest.mark.reliability
def test_bad_corpus_discovery_ignores_non_images_and_follows_links(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    expected = write_bad_corpus(tmp_path / "src", outside)
    found = discover(Store(str(tmp_path / "src")), layout="patient")
    assert found.rejected == []
    assert sorted(p.rsplit("/", 1)[-1] for p in found.ignored) == [
        ".DS_Store",
        "NOTES",
        "README.txt",
        "Thumbs.db",
    ]
    assert found.empty_patients == ["P3-empty"]
    assert sorted(c.uri.split("/src/")[1] for c in found.inputs) == sorted(expected)


@pytest.mark.reliability
def test_manifest_rows_missing_or_outside_the_root_are_refused(lmu_cells, tmp_path):
    root = compose_patient_cohort(lmu_cells, tmp_path / "m", {"A": (1, 1)})
    images = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    (tmp_path / "elsewhere.jpg").write_bytes((root / images[0]).read_bytes())
    manifest = pd.DataFrame(
        {
            "image_uri": [
                images[0],
                str(root / images[1]),
                "A/missing.jpg",
                "../elsewhere.jpg",
                str(tmp_path / "elsewhere.jpg"),
            ],
            "patient_id": ["A", "A", "A", "A", "A"],
            "label": ["blast", "", "normal", "blast", "blast"],
        }
    )
    manifest.to_csv(root / "manifest.csv", index=False)
    found = discover(Store(str(root / "manifest.csv")))
    assert found.layout == "manifest"
    assert [c.uri for c in found.inputs] == [str(root / images[0]), str(root / images[1])]
    assert [c.label for c in found.inputs] == ["blast", None]
    reasons = {r["source_uri"]: r["reason"] for r in found.rejected}
    assert reasons["A/missing.jpg"] == "file not found"
    assert reasons["../elsewhere.jpg"].startswith("path escapes the manifest root")
    assert reasons[str(tmp_path / "elsewhere.jpg")].startswith("path escapes the manifest root")


def test_inputs_are_named_by_their_path_under_the_source(lmu_cells, tmp_path):
    root = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (1, 1)})
    images = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    found = discover(Store(str(root)))
    assert found.root == str(root)
    assert [input_name(c.uri, found.root) for c in found.inputs] == images
    # A manifest's root is its folder; a refused entry keeps the manifest's own relative path, and a
    # URI outside the root (or a run without a recorded root) falls back to the file's name.
    pd.DataFrame({"image_uri": [images[0], "A/missing.jpg"], "patient_id": ["A", "A"]}).to_csv(
        root / "manifest.csv", index=False
    )
    listed = discover(Store(str(root / "manifest.csv")))
    assert listed.root == str(root) and input_name(listed.inputs[0].uri, listed.root) == images[0]
    assert input_name(listed.rejected[0]["source_uri"], listed.root) == "A/missing.jpg"
    assert input_name(str(tmp_path / "elsewhere" / "x.jpg"), listed.root) == "x.jpg"
    assert input_name(str(root / images[0]), "") == images[0].split("/")[1]


def test_manifest_without_required_columns_is_an_error(tmp_path):
    (tmp_path / "m.csv").write_text("path,label\na.png,blast\n")
    with pytest.raises(ValueError, match="lacks the column.*image_uri, patient_id"):
        discover(Store(str(tmp_path / "m.csv")))


def test_missing_source_and_bad_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover(Store(str(tmp_path / "nope")))
    with pytest.raises(ValueError, match="layout 'grid'"):
        discover(Store(str(tmp_path)), layout="grid")


def test_s3_source_patient_layout(lmu_cells, tmp_path, s3_bucket):
    bucket, options = s3_bucket
    root = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (1, 1), "B": (1, 0)})
    upload_folder(root, Store(f"s3://{bucket}/smears", options))
    found = discover(Store(f"s3://{bucket}/smears", options))
    assert found.layout == "patient"
    assert [c.uri.split("/smears/")[1] for c in found.inputs] == sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*.jpg")
    )
    assert all(c.uri.startswith(f"s3://{bucket}/smears/") for c in found.inputs)
    assert found.root == f"s3://{bucket}/smears"
    assert [input_name(c.uri, found.root) for c in found.inputs] == [
        c.uri.split("/smears/")[1] for c in found.inputs
    ]
    assert sorted(c.label for c in found.inputs) == ["blast", "blast", "normal"]


def test_class_folders_give_the_cell_type(lmu_cells, tmp_path):
    folders = {"MYO": ("MYO", 2), "ngs": ("NGS", 2), "blast": ("MYO", 1), "XYZ": ("NGS", 1)}
    root = compose_class_source(lmu_cells, tmp_path / "smear", folders)
    found = discover(Store(str(root)), layout="class")
    typed = sorted(
        (c.uri.split("/smear/")[1].split("/")[0], c.label, c.cell_type) for c in found.inputs
    )
    assert typed == [
        ("MYO", "blast", "myeloblast"),
        ("MYO", "blast", "myeloblast"),
        ("XYZ", None, None),
        ("blast", "blast", None),
        ("ngs", "normal", "segmented neutrophil"),
        ("ngs", "normal", "segmented neutrophil"),
    ]
    assert found.unknown_classes == ["XYZ"]


def test_patient_labels_csv_may_name_the_cell_type(lmu_cells, tmp_path):
    root = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (1, 1), "B": (0, 1)})
    labels = pd.read_csv(root / "labels.csv")
    types = {"blast": "myeloblast", "normal": ""}
    labels.assign(
        cell_type=[
            types[label] if patient == "A" else "band neutrophil"
            for label, patient in zip(labels["label"], labels["image"].str[0], strict=True)
        ]
    ).to_csv(root / "labels.csv", index=False)
    found = discover(Store(str(root)))
    assert found.layout == "patient"
    assert sorted((c.patient_id, c.label, c.cell_type) for c in found.inputs) == [
        ("A", "blast", "myeloblast"),
        ("A", "normal", None),
        ("B", "normal", "band neutrophil"),
    ]


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_manifest_may_name_the_cell_type(lmu_cells, tmp_path, suffix):
    root = compose_patient_cohort(lmu_cells, tmp_path / "m", {"A": (1, 1), "B": (1, 0)})
    images = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    manifest = pd.DataFrame(
        {
            "image_uri": images,
            "patient_id": [i[0] for i in images],
            "cell_type": ["myeloblast", None, " monocyte "],
        }
    )
    if suffix == "csv":
        manifest.to_csv(root / "manifest.csv", index=False)
    else:
        manifest.to_parquet(root / "manifest.parquet")
    found = discover(Store(str(root / f"manifest.{suffix}")))
    assert found.layout == "manifest"
    assert [(c.uri, c.cell_type) for c in found.inputs] == [
        (str(root / images[0]), "myeloblast"),
        (str(root / images[1]), None),
        (str(root / images[2]), "monocyte"),
    ]
    assert all(c.label is None for c in found.inputs)


def test_a_flat_folder_is_one_pseudo_patient_named_after_it(lmu_cells, tmp_path):
    root = (
        compose_class_source(lmu_cells, tmp_path / "cells", {"smear-17": ("MYO", 3)}) / "smear-17"
    )
    (root / "notes.txt").write_text("slide 4")
    found = discover(Store(str(root)))
    assert found.layout == "flat"
    assert [(c.patient_id, c.label, c.cell_type) for c in found.inputs] == [
        ("smear-17", None, None)
    ] * 3
    assert found.rejected == []
    assert [p.rsplit("/", 1)[-1] for p in found.ignored] == ["notes.txt"]
    # Named, not chosen: a patient layout has no room for loose images, and says so for each.
    refused = discover(Store(str(root)), layout="patient")
    assert refused.inputs == []
    assert {r["reason"] for r in refused.rejected} == {"image is not inside a patient folder"}


def test_symlinked_patient_folders_and_files_are_followed(lmu_cells, tmp_path):
    archive = compose_patient_cohort(
        lmu_cells, tmp_path / "archive", {"A": (1, 1), "B": (1, 0), "C": (0, 1)}
    )
    batch = tmp_path / "batch"
    batch.mkdir()
    (batch / "A").symlink_to(archive / "A")  # folders linked from outside the batch
    (batch / "B").symlink_to(archive / "B", target_is_directory=True)
    (batch / "C").mkdir()
    for image in (archive / "C").iterdir():  # a folder of linked files
        (batch / "C" / image.name).symlink_to(image)
    found = discover(Store(str(batch)))
    assert found.layout == "patient"
    assert [c.patient_id for c in found.inputs] == ["A", "A", "B", "C"]
    assert all(c.uri.startswith(str(batch) + "/") for c in found.inputs)  # read through the links
    assert found.rejected == [] and found.ignored == [] and found.skipped_links == []


@pytest.mark.reliability
def test_a_symlink_loop_is_skipped_with_its_reason_not_walked_forever(lmu_cells, tmp_path):
    root = compose_patient_cohort(lmu_cells, tmp_path / "cohort", {"A": (1, 1)})
    (root / "A" / "again").symlink_to(root)  # back to the source root
    (root / "A" / "self").symlink_to(root / "A")  # back to its own folder
    (root / "loop").symlink_to(
        root
    )  # a top-level link to the root is a loop too, not an empty patient
    (root / "ping.jpg").symlink_to(root / "pong.jpg")  # links leading to each other
    (root / "pong.jpg").symlink_to(root / "ping.jpg")

    def hung(signum, frame):
        raise TimeoutError("discovery did not finish in 20 s: a symlink loop was walked")

    signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        found = discover(Store(str(root)))
    finally:
        signal.alarm(0)
    assert found.layout == "patient"
    assert [c.patient_id for c in found.inputs] == ["A", "A"]
    skipped = {
        os.path.relpath(link["source_uri"], root): link["reason"] for link in found.skipped_links
    }
    assert skipped == {
        "A/again": "symbolic link loop: it leads back to a folder it lies in",
        "A/self": "symbolic link loop: it leads back to a folder it lies in",
        "loop": "symbolic link loop: it leads back to a folder it lies in",
        "ping.jpg": "symbolic link loop: following it never reaches a file",
        "pong.jpg": "symbolic link loop: following it never reaches a file",
    }
    assert found.empty_patients == []


def test_a_source_without_usable_images_says_what_it_holds(lmu_cells, tmp_path):
    notes = tmp_path / "notes"
    (notes / "P1").mkdir(parents=True)
    (notes / "P1" / "readme.txt").write_text("to do")
    (notes / "P1" / "counts.csv").write_text("a,b\n")
    with pytest.raises(
        NoImagesError,
        match=rf"no images found in {notes} \(layout patient\): 2 files, none an "
        r"image by its name or its first bytes "
        r"\(e\.g\. counts\.csv, readme\.txt\)",
    ):
        require_images(discover(Store(str(notes))))
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoImagesError, match="holds no files"):
        require_images(discover(Store(str(tmp_path / "empty"))))
    flat = compose_class_source(lmu_cells, tmp_path / "cells", {"smear": ("NGS", 2)}) / "smear"
    with pytest.raises(
        NoImagesError,
        match=r"no usable images in .* 2 images, all refused at discovery: "
        r"image is not inside a class folder \(2\)",
    ):
        require_images(discover(Store(str(flat)), layout="class"))
