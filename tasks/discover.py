"""Find the cell images of a source in one of the three layouts (DESIGN.md, "Inputs")."""

from __future__ import annotations

import io
import logging
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field

import fsspec
import pandas as pd

from tasks.retry import store_task
from tasks.storage import is_local

from aml_model.layouts import (DEFAULT_CLASS_LABELS, LABELS, cell_type_for_class, choose_layout, is_image_name,
                               is_plainly_not_image, label_for_class)
from aml_model.preprocess import SNIFF_BYTES, sniff_image_format

__all__ = ["CellInput", "Discovery", "discover", "discover_inputs"]

logger = logging.getLogger(__name__)

LAYOUTS = ("auto", "patient", "class", "manifest")
MANIFEST_SUFFIXES = (".csv", ".parquet")
SIDECARS = ("patients.csv", "labels.csv")


@dataclass(frozen=True)
class CellInput:
    """One candidate cell image: where it is, whose it is, and its label and cell type when known."""

    uri: str
    patient_id: str
    label: str | None = None
    cell_type: str | None = None


@dataclass
class Discovery:
    """What a source holds.

    Attributes:
        source: the source URL as given.
        layout: the layout used ("patient", "class" or "manifest").
        inputs: candidate images, sorted by patient then URI.
        rejected: inputs refused before decoding: dicts of source_uri, patient_id, reason.
        ignored: files that are plainly not images (sidecars, notes, ``.DS_Store``), listed,
            not quarantined; image files of any format are inputs, quarantined when unusable.
        empty_patients: patient folders without any image.
        unknown_classes: class folders the class map does not know (label left unknown).
        diagnoses: patient_id -> "aml"/"healthy" from patients.csv, when present.
    """

    source: str
    layout: str
    inputs: list[CellInput] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    empty_patients: list[str] = field(default_factory=list)
    unknown_classes: list[str] = field(default_factory=list)
    diagnoses: dict[str, str] = field(default_factory=dict)


def _url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return path if is_local(fs) else fs.unstrip_protocol(path)


def _escapes(fs: fsspec.AbstractFileSystem, root: str, path: str) -> bool:
    """True when ``path`` lies outside ``root``, after resolving ``..`` and, locally, symlinks."""
    if is_local(fs):
        real_root, real_path = os.path.realpath(root), os.path.realpath(path)
        return os.path.commonpath([real_root, real_path]) != real_root
    norm_root = posixpath.normpath(root)
    return not posixpath.normpath(path).startswith(norm_root.rstrip("/") + "/")


def _read_csv(fs: fsspec.AbstractFileSystem, path: str) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(fs.cat_file(path)), dtype=str, keep_default_na=False)


def _walk(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    return sorted(p for p in fs.find(root, detail=False) if p != root)


def _is_image(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """Whether a file is a cell image to decode (or quarantine), not a file to ignore.

    Named as an image (any image format, supported or not): yes. Plainly not an image (notes,
    sidecars, ``.DS_Store``, ``Thumbs.db``): no. Otherwise (no suffix, an unknown one) its first
    bytes decide.
    """
    if is_image_name(path):
        return True
    if is_plainly_not_image(path):
        return False
    try:
        head = fs.cat_file(path, start=0, end=SNIFF_BYTES)
    except OSError:  # a dangling link without an image name: nothing to say it is an image
        return False
    return sniff_image_format(head) is not None


def _discover_folders(fs, root: str, source: str, layout: str,
                      class_labels: Mapping[str, str]) -> Discovery:
    files = _walk(fs, root)
    relative = {path: posixpath.relpath(path, root) for path in files}
    images = {path for path in files if _is_image(fs, path)}
    image_dirs = sorted({relative[path].split("/")[0] for path in images if "/" in relative[path]})
    if layout == "auto":
        layout = choose_layout(image_dirs, class_labels)
        logger.info("layout auto: chose %r for %s", layout, source)
    found = Discovery(source=source, layout=layout)

    labels: dict[str, str] = {}
    cell_types: dict[str, str] = {}
    if layout == "patient":
        if fs.isfile(posixpath.join(root, "labels.csv")):
            table = _read_csv(fs, posixpath.join(root, "labels.csv"))
            labels = {row["image"]: row["label"].strip().lower() for _, row in table.iterrows()}
            if "cell_type" in table.columns:
                cell_types = {row["image"]: row["cell_type"].strip() for _, row in table.iterrows()
                              if row["cell_type"].strip()}
        if fs.isfile(posixpath.join(root, "patients.csv")):
            table = _read_csv(fs, posixpath.join(root, "patients.csv"))
            found.diagnoses = {row["patient_id"]: row["diagnosis"].strip().lower() for _, row in table.iterrows()}
        all_dirs = sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False) if fs.isdir(p))
        found.empty_patients = [d for d in all_dirs if d not in image_dirs]

    root_name = posixpath.basename(root.rstrip("/"))
    unknown: set[str] = set()
    for path in files:
        rel = relative[path]
        if path not in images:
            found.ignored.append(_url(fs, path))
            continue
        if "/" not in rel:
            found.rejected.append({"source_uri": _url(fs, path), "patient_id": "",
                                   "reason": f"image is not inside a {layout} folder"})
            continue
        folder = rel.split("/")[0]
        if layout == "class":
            patient_id, label = root_name, label_for_class(folder, class_labels)
            cell_type = cell_type_for_class(folder, class_labels)
            if label is None:
                unknown.add(folder)
        else:
            patient_id, label, cell_type = folder, labels.get(rel), cell_types.get(rel)
        if _escapes(fs, root, path):
            found.rejected.append({"source_uri": _url(fs, path), "patient_id": patient_id,
                                   "reason": "symbolic link points outside the source root"})
            continue
        if label is not None and label not in LABELS:
            found.rejected.append({"source_uri": _url(fs, path), "patient_id": patient_id,
                                   "reason": f"label {label!r} is not one of {', '.join(LABELS)}"})
            continue
        found.inputs.append(CellInput(_url(fs, path), patient_id, label, cell_type))
    found.unknown_classes = sorted(unknown)
    return found


def _text(value) -> str | None:
    """A manifest cell as stripped text, None when empty or missing (CSV "" or Parquet null)."""
    return None if value is None or pd.isna(value) or not str(value).strip() else str(value).strip()


def _discover_manifest(fs, path: str, source: str, manifest_root: str | None,
                       storage_options: dict) -> Discovery:
    raw = fs.cat_file(path)
    table = (pd.read_parquet(io.BytesIO(raw)) if path.endswith(".parquet")
             else pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False))
    missing = {"image_uri", "patient_id"} - set(table.columns)
    if missing:
        message = f"manifest {source} lacks the column(s) {', '.join(sorted(missing))}"
        raise ValueError(message)
    found = Discovery(source=source, layout="manifest")
    root_url = manifest_root or _url(fs, posixpath.dirname(path))
    root_fs, root = fsspec.core.url_to_fs(root_url, **storage_options)
    for row in table.itertuples(index=False):
        entry, patient_id = str(row.image_uri), str(row.patient_id)
        label = str(getattr(row, "label", "") or "").strip().lower() or None
        cell_type = _text(getattr(row, "cell_type", None))
        if "://" in entry:
            entry_fs, entry_path = fsspec.core.url_to_fs(entry, **storage_options)
            same_fs = type(entry_fs) is type(root_fs)
        else:
            entry_fs, same_fs = root_fs, True
            entry_path = entry if posixpath.isabs(entry) else posixpath.join(root, entry)
        reason = None
        if not same_fs or _escapes(root_fs, root, entry_path):
            reason = f"path escapes the manifest root {root_url}"
        elif not entry_fs.isfile(entry_path):
            reason = "file not found"
        elif label is not None and label not in LABELS:
            reason = f"label {label!r} is not one of {', '.join(LABELS)}"
        if reason:
            found.rejected.append({"source_uri": entry, "patient_id": patient_id, "reason": reason})
        else:
            found.inputs.append(CellInput(_url(entry_fs, entry_path), patient_id, label, cell_type))
    return found


def discover(
    source: str,
    layout: str = "auto",
    storage_options: dict | None = None,
    class_labels: Mapping[str, str] = DEFAULT_CLASS_LABELS,
    manifest_root: str | None = None,
) -> Discovery:
    """List the candidate cell images of ``source``.

    Args:
        source: a folder (patient or class layout) or a manifest file (CSV/Parquet with
            image_uri, patient_id and optional label and cell_type), as any fsspec URL. Cell types
            come from the class folder (class layout) or an optional cell_type column of the
            patient layout's labels.csv or of the manifest.
        layout: "auto", "patient", "class" or "manifest". Auto picks manifest for a
            .csv/.parquet file, class when every top-level folder is a known class, else patient.
        storage_options: fsspec options for the source.
        class_labels: class folder -> "blast"/"normal" (class layout).
        manifest_root: manifest entries must lie under this URL; default the manifest's folder.

    Raises:
        FileNotFoundError: the source does not exist.
        ValueError: an unknown layout, or a manifest without the required columns.
    """
    if layout not in LAYOUTS:
        message = f"layout {layout!r} is not one of {', '.join(LAYOUTS)}"
        raise ValueError(message)
    storage_options = storage_options or {}
    fs, path = fsspec.core.url_to_fs(source, **storage_options)
    if not fs.exists(path):
        message = f"source {source} does not exist"
        raise FileNotFoundError(message)
    is_manifest_file = fs.isfile(path) and path.lower().endswith(MANIFEST_SUFFIXES)
    if layout == "manifest" or (layout == "auto" and is_manifest_file):
        if not fs.isfile(path):
            message = f"layout manifest needs a .csv or .parquet file, but {source} is a folder"
            raise ValueError(message)
        found = _discover_manifest(fs, path, source, manifest_root, storage_options)
    else:
        if not fs.isdir(path):
            message = f"source {source} is a file; a {layout} layout needs a folder"
            raise ValueError(message)
        found = _discover_folders(fs, path, source, layout, class_labels)
    found.inputs.sort(key=lambda cell: (cell.patient_id, cell.uri))
    return found


@store_task("discover-inputs")
def discover_inputs(source: str, layout: str, storage_options: dict,
                    manifest_root: str | None = None) -> Discovery:
    """Prefect task around :func:`discover` (retried: listing is network I/O on S3)."""
    return discover(source, layout, storage_options, manifest_root=manifest_root)
