import pytest

from aml_model.layouts import (
    DEFAULT_CLASS_LABELS,
    LMU_CLASSES,
    cell_type_for_class,
    choose_layout,
    is_image_name,
    is_plainly_not_image,
    label_for_class,
)


def test_default_class_map_makes_only_myeloblasts_and_monoblasts_blasts():
    blasts = sorted(code for code, label in DEFAULT_CLASS_LABELS.items() if label == "blast")
    assert blasts == ["MOB", "MYO"]
    assert label_for_class("MYB") == "normal"  # a myelocyte, not a myeloblast
    assert len(DEFAULT_CLASS_LABELS) == 15


def test_label_folders_and_unknown_classes():
    assert label_for_class("Blast") == "blast"
    assert label_for_class("NORMAL") == "normal"
    assert label_for_class("XYZ") is None
    with pytest.raises(ValueError, match="labels must be one of"):
        label_for_class("A", {"A": "maybe"})


def test_image_names():
    assert is_image_name("P1/cell.JPG") and is_image_name("a.tiff") and is_image_name("b.bmp")
    assert not is_image_name("P1/.DS_Store") and not is_image_name("notes.txt")
    assert not is_image_name("P1/._cell.jpg") and not is_image_name("README")
    # Formats the decoder does not read are still images (quarantined with the reason), not ignored.
    assert is_image_name("P1/cell.gif") and is_image_name("cell.WEBP") and is_image_name("x.heic")
    assert not is_image_name("P1/Thumbs.db") and not is_image_name("desktop.ini")


def test_files_that_are_plainly_not_images():
    for name in (
        "P1/.DS_Store",
        "P1/._cell.jpg",
        "P1/Thumbs.db",
        "notes.txt",
        "README.md",
        "labels.csv",
        "scan.pdf",
    ):
        assert is_plainly_not_image(name), name
    # No suffix, or an unknown one: the file's first bytes decide (tasks.discover).
    for name in ("README", "P1/scan-0042", "P1/cell.dat", "P1/cell.gif", "P1/cell.png"):
        assert not is_plainly_not_image(name), name


def test_layout_choice():
    assert choose_layout(["MYO", "NGS"]) == "class"
    assert choose_layout(["blast", "Normal"]) == "class"
    assert choose_layout(["MYO", "patient-7"]) == "patient"
    assert choose_layout([]) == "patient"


def test_images_directly_in_the_source_and_no_image_folder_make_a_flat_layout():
    assert choose_layout([], loose_images=True) == "flat"
    # Beside image folders, loose images are not a layout of their own: they are refused with a reason.
    assert choose_layout(["P1"], loose_images=True) == "patient"
    assert choose_layout(["MYO"], loose_images=True) == "class"


def test_class_folders_name_their_cell_type():
    assert cell_type_for_class("NGS") == "segmented neutrophil"
    assert cell_type_for_class("MYO") == "myeloblast"
    assert cell_type_for_class("LYT") == "typical lymphocyte"
    assert (
        cell_type_for_class("myb") == "myelocyte"
    )  # codes in any case, as label_for_class reads them
    assert {code: cell_type_for_class(code) for code in LMU_CLASSES} == dict(LMU_CLASSES)


def test_label_folders_and_unknown_folders_name_no_cell_type():
    assert cell_type_for_class("blast") is None and cell_type_for_class("Normal") is None
    assert cell_type_for_class("XYZ") is None
    custom = {**DEFAULT_CLASS_LABELS, "Hairy cell": "normal"}
    assert (
        cell_type_for_class("Hairy cell", custom) == "Hairy cell"
    )  # a mapped folder: its name as given
    assert cell_type_for_class("Hairy cell") is None  # unknown to the default map
