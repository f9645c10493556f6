"""Rules for reading single-cell image collections: image names, class labels, layout choice.

Pure functions over names; listing files is the job of ``tasks.discover``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

__all__ = [
    "DEFAULT_CLASS_LABELS",
    "IMAGE_SUFFIXES",
    "LABELS",
    "LMU_CLASSES",
    "cell_type_for_class",
    "choose_layout",
    "is_image_name",
    "label_for_class",
]

#: Labels a cell can carry.
LABELS = ("blast", "normal")

IMAGE_SUFFIXES = frozenset({".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp"})

#: The 15 morphological classes of TCIA AML-Cytomorphology_LMU (Matek et al. 2019).
LMU_CLASSES = MappingProxyType({
    "BAS": "basophil", "EBO": "erythroblast", "EOS": "eosinophil", "KSC": "smudge cell",
    "LYA": "atypical lymphocyte", "LYT": "typical lymphocyte", "MMZ": "metamyelocyte",
    "MOB": "monoblast", "MON": "monocyte", "MYB": "myelocyte", "MYO": "myeloblast",
    "NGB": "band neutrophil", "NGS": "segmented neutrophil", "PMB": "promyelocyte (bilobed)",
    "PMO": "promyelocyte",
})

#: Default class-to-label map: myeloblasts and monoblasts are blasts. MYB is a myelocyte, not a blast.
DEFAULT_CLASS_LABELS = MappingProxyType(
    {code: ("blast" if code in ("MYO", "MOB") else "normal") for code in LMU_CLASSES}
)


def is_image_name(name: str) -> bool:
    """True for a file name with a supported image suffix that is not hidden (``.DS_Store``...)."""
    base = name.rsplit("/", 1)[-1]
    if base.startswith(".") or "." not in base:
        return False
    return "." + base.rsplit(".", 1)[-1].lower() in IMAGE_SUFFIXES


def label_for_class(folder: str, class_labels: Mapping[str, str] = DEFAULT_CLASS_LABELS) -> str | None:
    """The label of a class folder: ``blast``/``normal`` folders (any case) or the class map.

    Returns:
        "blast", "normal", or None for a class the map does not know.
    """
    if folder.lower() in LABELS:
        return folder.lower()
    label = class_labels.get(folder, class_labels.get(folder.upper()))
    if label is not None and label not in LABELS:
        message = f"class {folder!r} maps to {label!r}; labels must be one of {LABELS}"
        raise ValueError(message)
    return label


def cell_type_for_class(folder: str, class_labels: Mapping[str, str] = DEFAULT_CLASS_LABELS) -> str | None:
    """The cell type a class folder names, for the ``cell_type`` column of cells.parquet.

    A TCIA-LMU class code (any case) gives its readable name from :data:`LMU_CLASSES`
    (``NGS`` -> "segmented neutrophil", ``MYO`` -> "myeloblast"); another folder the class map
    knows gives its own name as written. The generic label folders ``blast``/``normal`` and
    other folders the class map does not know name no type.

    Args:
        folder: the class folder's name.
        class_labels: the class-to-label map of the class layout.

    Returns:
        The cell type, or None when the folder names none.
    """
    if folder.lower() in LABELS:
        return None
    if folder.upper() in LMU_CLASSES:
        return LMU_CLASSES[folder.upper()]
    return folder if folder in class_labels or folder.upper() in class_labels else None


def choose_layout(folders: Iterable[str], class_labels: Mapping[str, str] = DEFAULT_CLASS_LABELS) -> str:
    """Pick "class" when every top-level folder holding images is a known class, else "patient".

    Args:
        folders: names of the source's top-level folders that hold images.
        class_labels: the class-to-label map.
    """
    names = list(folders)
    if names and all(label_for_class(name, class_labels) is not None for name in names):
        return "class"
    return "patient"
