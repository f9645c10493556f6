"""Rules for reading single-cell image collections: image names, class labels, layout choice.

Pure functions over names; listing files is the job of ``tasks.discover``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

__all__ = [
    "DEFAULT_CLASS_LABELS",
    "IMAGE_SUFFIXES",
    "JUNK_NAMES",
    "LABELS",
    "LMU_CLASSES",
    "NOT_IMAGE_SUFFIXES",
    "OTHER_IMAGE_SUFFIXES",
    "cell_type_for_class",
    "choose_layout",
    "is_image_name",
    "is_plainly_not_image",
    "label_for_class",
]

#: Labels a cell can carry.
LABELS = ("blast", "normal")

#: Suffixes of the formats the decoder reads (aml_model.preprocess.SUPPORTED_FORMATS).
IMAGE_SUFFIXES = frozenset({".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp"})
#: Suffixes of other image formats. Such a file is still a cell image: the decoder quarantines
#: it with its reason ("unsupported format GIF (supported: ...)"), it is never silently ignored.
OTHER_IMAGE_SUFFIXES = frozenset(
    {
        ".gif",
        ".webp",
        ".heic",
        ".heif",
        ".avif",
        ".jp2",
        ".j2k",
        ".jpx",
        ".jpf",
        ".jxl",
        ".jfif",
        ".jpe",
        ".ico",
        ".cur",
        ".svg",
        ".psd",
        ".tga",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".pcx",
        ".dib",
        ".dcm",
        ".dicom",
        ".dng",
        ".cr2",
        ".nef",
        ".arw",
        ".raw",
        ".exr",
        ".hdr",
        ".eps",
        ".emf",
        ".wmf",
        ".xcf",
    }
)
#: Suffixes of files that are plainly not images: notes, sidecar tables, documents, archives.
NOT_IMAGE_SUFFIXES = frozenset(
    {
        ".txt",
        ".md",
        ".rst",
        ".csv",
        ".tsv",
        ".json",
        ".xml",
        ".yaml",
        ".yml",
        ".log",
        ".ini",
        ".cfg",
        ".html",
        ".htm",
        ".pdf",
        ".rtf",
        ".doc",
        ".docx",
        ".xls",
        ".xlsx",
        ".odt",
        ".ods",
        ".parquet",
        ".zip",
        ".gz",
        ".tar",
        ".7z",
        ".py",
        ".sh",
        ".db",
        ".sqlite",
        ".lnk",
        ".url",
    }
)
#: File names operating systems and tools leave in folders (matched without case).
JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r"})

#: The 15 morphological classes of TCIA AML-Cytomorphology_LMU (Matek et al. 2019).
LMU_CLASSES = MappingProxyType(
    {
        "BAS": "basophil",
        "EBO": "erythroblast",
        "EOS": "eosinophil",
        "KSC": "smudge cell",
        "LYA": "atypical lymphocyte",
        "LYT": "typical lymphocyte",
        "MMZ": "metamyelocyte",
        "MOB": "monoblast",
        "MON": "monocyte",
        "MYB": "myelocyte",
        "MYO": "myeloblast",
        "NGB": "band neutrophil",
        "NGS": "segmented neutrophil",
        "PMB": "promyelocyte (bilobed)",
        "PMO": "promyelocyte",
    }
)

#: Default class-to-label map: myeloblasts and monoblasts are blasts. MYB is a myelocyte, not a blast.
DEFAULT_CLASS_LABELS = MappingProxyType(
    {code: ("blast" if code in ("MYO", "MOB") else "normal") for code in LMU_CLASSES}
)


def _suffix(base: str) -> str:
    return "." + base.rsplit(".", 1)[-1].lower() if "." in base else ""


def is_image_name(name: str) -> bool:
    """True for a file named as an image (any image format's suffix) that is not hidden.

    Formats the decoder does not read count too (``cell.gif``): such a file is a cell that
    cannot be used, to be quarantined with its reason, not ignored.
    """
    base = name.rsplit("/", 1)[-1]
    if base.startswith(".") or base.lower() in JUNK_NAMES:
        return False
    return _suffix(base) in IMAGE_SUFFIXES | OTHER_IMAGE_SUFFIXES


def is_plainly_not_image(name: str) -> bool:
    """True for a file that is plainly not a cell image, to be ignored without reading it.

    Hidden files (``.DS_Store``, ``._cell.jpg`` AppleDouble files), ``Thumbs.db`` and the like,
    and notes, sidecar tables and documents by their suffix. A name that is neither this nor
    :func:`is_image_name` (no suffix, an unknown one) is an image only if its first bytes say so
    (:func:`aml_model.preprocess.sniff_image_format`).
    """
    base = name.rsplit("/", 1)[-1]
    return base.startswith(".") or base.lower() in JUNK_NAMES or _suffix(base) in NOT_IMAGE_SUFFIXES


def label_for_class(
    folder: str, class_labels: Mapping[str, str] = DEFAULT_CLASS_LABELS
) -> str | None:
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


def cell_type_for_class(
    folder: str, class_labels: Mapping[str, str] = DEFAULT_CLASS_LABELS
) -> str | None:
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


def choose_layout(
    folders: Iterable[str],
    class_labels: Mapping[str, str] = DEFAULT_CLASS_LABELS,
    loose_images: bool = False,
) -> str:
    """Pick "flat", "class" or "patient" for a folder source.

    "flat" when images lie directly in the source and no top-level folder holds any (a folder of
    one smear's cells, the most common first try); "class" when every top-level folder holding
    images is a known class; else "patient".

    Args:
        folders: names of the source's top-level folders that hold images.
        class_labels: the class-to-label map.
        loose_images: whether images lie directly in the source folder.
    """
    names = list(folders)
    if not names and loose_images:
        return "flat"
    if names and all(label_for_class(name, class_labels) is not None for name in names):
        return "class"
    return "patient"
