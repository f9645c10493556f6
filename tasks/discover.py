"""Find the cell images of a source in one of its layouts (docs/design.md, "Inputs")."""

from __future__ import annotations

import errno
import io
import logging
import os
import posixpath
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import fsspec
import pandas as pd

from aml_model.errors import AmlSmearError
from aml_model.layouts import (
    DEFAULT_CLASS_LABELS,
    LABELS,
    cell_type_for_class,
    choose_layout,
    is_image_name,
    is_plainly_not_image,
    label_for_class,
)
from aml_model.preprocess import SNIFF_BYTES, sniff_image_format
from tasks.store import Store, is_local

if TYPE_CHECKING:
    from tasks.listing import Listing

__all__ = [
    "CellInput",
    "Discovery",
    "NoImagesError",
    "discover",
    "input_name",
    "require_images",
]

logger = logging.getLogger(__name__)

LAYOUTS = ("auto", "patient", "class", "manifest")
MANIFEST_SUFFIXES = (".csv", ".parquet")
SIDECARS = ("patients.csv", "labels.csv")


class NoImagesError(AmlSmearError, FileNotFoundError):
    """A source holds no image to decode; raised before anything is written, saying what it holds instead."""


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
        layout: the layout used ("patient", "class", "flat" or "manifest"); "flat" is chosen by
            "auto" only, for images directly in the source folder: one pseudo-patient named after it.
        root: the URL the inputs' names are relative to (:func:`input_name`), in the form of their
            URIs: the source folder, or a manifest's root (its folder or ``manifest_root``).
        inputs: candidate images, sorted by patient then URI.
        rejected: inputs refused before decoding: dicts of source_uri, patient_id, reason.
        ignored: files that are plainly not images (sidecars, notes, ``.DS_Store``), listed,
            not quarantined; image files of any format are inputs, quarantined when unusable.
        empty_patients: patient folders without any image.
        unknown_classes: class folders the class map does not know (label left unknown).
        diagnoses: patient_id -> "aml"/"healthy" from patients.csv, when present.
        skipped_links: symbolic links not followed (a loop, an unreadable folder): dicts of
            source_uri, reason.
    """

    source: str
    layout: str
    root: str = ""
    inputs: list[CellInput] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    empty_patients: list[str] = field(default_factory=list)
    unknown_classes: list[str] = field(default_factory=list)
    diagnoses: dict[str, str] = field(default_factory=dict)
    skipped_links: list[dict[str, str]] = field(default_factory=list)

    @property
    def n_inputs(self) -> int:
        return len(self.inputs)


def _url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return path if is_local(fs) else fs.unstrip_protocol(path)


def _escapes(fs: fsspec.AbstractFileSystem, root: str, path: str) -> bool:
    """True when ``path`` lies outside ``root``, after resolving ``..`` and, locally, symlinks.

    For manifest entries, text that could name any file; a folder source's links are followed
    wherever they lead (:func:`_walk_local`).
    """
    if is_local(fs):
        real_root, real_path = os.path.realpath(root), os.path.realpath(path)
        return os.path.commonpath([real_root, real_path]) != real_root
    norm_root = posixpath.normpath(root)
    return not posixpath.normpath(path).startswith(norm_root.rstrip("/") + "/")


def _read_csv(fs: fsspec.AbstractFileSystem, path: str) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(fs.cat_file(path)), dtype=str, keep_default_na=False)


def _walk_local(root: str) -> tuple[list[str], list[dict[str, str]]]:
    """Every file under ``root`` on local disk, following symbolic links to files and folders.

    Labs assemble a batch from links into their archive, and fsspec's walk lists a linked folder
    as one file. A link that leads back to a folder it lies in would be walked forever: such a
    loop is skipped with its reason, as is a folder that cannot be listed.

    Returns:
        The files' paths as reached (links not resolved), sorted, and the skipped links and
        folders: dicts of source_uri, reason.
    """
    files: list[str] = []
    skipped: list[dict[str, str]] = []

    def visit(folder: str, ancestors: frozenset[str]) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as exc:
            skipped.append(
                {"source_uri": folder, "reason": f"folder cannot be listed: {exc.strerror or exc}"}
            )
            return
        for entry in entries:
            try:
                entry.stat()
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # links leading to each other: no file at the end
                    skipped.append(
                        {
                            "source_uri": entry.path,
                            "reason": "symbolic link loop: following it never reaches a file",
                        }
                    )
                    continue
            if not entry.is_dir():  # a file, or a dangling link: the decoder says "file not found"
                files.append(entry.path)
                continue
            target = os.path.realpath(entry.path)
            if target in ancestors:
                skipped.append(
                    {
                        "source_uri": entry.path,
                        "reason": "symbolic link loop: it leads back to a folder it lies in",
                    }
                )
                continue
            visit(entry.path, ancestors | {target})

    visit(root, frozenset({os.path.realpath(root)}))
    return sorted(files), skipped


def _walk(fs: fsspec.AbstractFileSystem, root: str) -> tuple[list[str], list[dict[str, str]]]:
    """The files under ``root`` and the links not followed (object stores have no links)."""
    if is_local(fs):
        return _walk_local(root)
    return sorted(p for p in fs.find(root, detail=False) if p != root), []


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


def _discover_folders(
    fs, root: str, source: str, layout: str, class_labels: Mapping[str, str]
) -> Discovery:
    files, skipped_links = _walk(fs, root)
    relative = {path: posixpath.relpath(path, root) for path in files}
    images = {path for path in files if _is_image(fs, path)}
    image_dirs = sorted({relative[path].split("/")[0] for path in images if "/" in relative[path]})
    if layout == "auto":
        layout = choose_layout(
            image_dirs, class_labels, loose_images=any("/" not in relative[p] for p in images)
        )
        logger.info("layout auto: chose %r for %s", layout, source)
    found = Discovery(
        source=source,
        layout=layout,
        root=_url(fs, root),
        skipped_links=[
            {**link, "source_uri": _url(fs, link["source_uri"])} for link in skipped_links
        ],
    )

    labels: dict[str, str] = {}
    cell_types: dict[str, str] = {}
    if layout in ("patient", "flat"):
        if fs.isfile(posixpath.join(root, "labels.csv")):
            table = _read_csv(fs, posixpath.join(root, "labels.csv"))
            labels = {row["image"]: row["label"].strip().lower() for _, row in table.iterrows()}
            if "cell_type" in table.columns:
                cell_types = {
                    row["image"]: row["cell_type"].strip()
                    for _, row in table.iterrows()
                    if row["cell_type"].strip()
                }
        if fs.isfile(posixpath.join(root, "patients.csv")):
            table = _read_csv(fs, posixpath.join(root, "patients.csv"))
            found.diagnoses = {
                row["patient_id"]: row["diagnosis"].strip().lower() for _, row in table.iterrows()
            }
    if layout == "patient":
        not_followed = {posixpath.relpath(link["source_uri"], root) for link in skipped_links}
        all_dirs = sorted(
            posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False) if fs.isdir(p)
        )
        found.empty_patients = [
            d for d in all_dirs if d not in image_dirs and d not in not_followed
        ]

    root_name = posixpath.basename(root.rstrip("/"))
    unknown: set[str] = set()
    for path in files:
        rel = relative[path]
        if path not in images:
            found.ignored.append(_url(fs, path))
            continue
        if "/" not in rel and layout != "flat":
            found.rejected.append(
                {
                    "source_uri": _url(fs, path),
                    "patient_id": "",
                    "reason": f"image is not inside a {layout} folder",
                }
            )
            continue
        folder = rel.split("/")[0]
        if layout == "flat":
            patient_id, label, cell_type = root_name, labels.get(rel), cell_types.get(rel)
        elif layout == "class":
            patient_id, label = root_name, label_for_class(folder, class_labels)
            cell_type = cell_type_for_class(folder, class_labels)
            if label is None:
                unknown.add(folder)
        else:
            patient_id, label, cell_type = folder, labels.get(rel), cell_types.get(rel)
        if label is not None and label not in LABELS:
            found.rejected.append(
                {
                    "source_uri": _url(fs, path),
                    "patient_id": patient_id,
                    "reason": f"label {label!r} is not one of {', '.join(LABELS)}",
                }
            )
            continue
        found.inputs.append(CellInput(_url(fs, path), patient_id, label, cell_type))
    found.unknown_classes = sorted(unknown)
    return found


def _text(value) -> str | None:
    """A manifest cell as stripped text, None when empty or missing (CSV "" or Parquet null)."""
    return None if value is None or pd.isna(value) or not str(value).strip() else str(value).strip()


def _discover_manifest(fs, path: str, source: Store, manifest_root: str | None) -> Discovery:
    raw = fs.cat_file(path)
    table = (
        pd.read_parquet(io.BytesIO(raw))
        if path.endswith(".parquet")
        else pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False)
    )
    missing = {"image_uri", "patient_id"} - set(table.columns)
    if missing:
        message = f"manifest {source.url} lacks the column(s) {', '.join(sorted(missing))}"
        raise ValueError(message)
    root_url = manifest_root or _url(fs, posixpath.dirname(path))
    root_fs, root = source.resolve(root_url)
    found = Discovery(source=source.url, layout="manifest", root=_url(root_fs, root))
    for row in table.itertuples(index=False):
        entry, patient_id = str(row.image_uri), str(row.patient_id)
        label = str(getattr(row, "label", "") or "").strip().lower() or None
        cell_type = _text(getattr(row, "cell_type", None))
        if "://" in entry:
            entry_fs, entry_path = source.resolve(entry)
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
    source: Store,
    layout: str = "auto",
    class_labels: Mapping[str, str] = DEFAULT_CLASS_LABELS,
    manifest_root: str | None = None,
) -> Discovery:
    """List the candidate cell images of ``source``.

    Args:
        source: a folder (patient or class layout) or a manifest file (CSV/Parquet with
            image_uri, patient_id and optional label and cell_type), as a Store at any fsspec URL
            (its options also reach the manifest's root and entries). Cell types
            come from the class folder (class layout) or an optional cell_type column of the
            patient layout's labels.csv or of the manifest.
        layout: "auto", "patient", "class" or "manifest". Auto picks manifest for a
            .csv/.parquet file, class when every top-level folder is a known class, else patient.
        class_labels: class folder -> "blast"/"normal" (class layout).
        manifest_root: manifest entries must lie under this URL; default the manifest's folder.

    Raises:
        FileNotFoundError: the source does not exist.
        ValueError: an unknown layout, or a manifest without the required columns.
    """
    if layout not in LAYOUTS:
        message = f"layout {layout!r} is not one of {', '.join(LAYOUTS)}"
        raise ValueError(message)
    fs, path = source.resolve()
    if not fs.exists(path):
        message = f"source {source.url} does not exist"
        raise FileNotFoundError(message)
    is_manifest_file = fs.isfile(path) and path.lower().endswith(MANIFEST_SUFFIXES)
    if layout == "manifest" or (layout == "auto" and is_manifest_file):
        if not fs.isfile(path):
            message = f"layout manifest needs a .csv or .parquet file, but {source.url} is a folder"
            raise ValueError(message)
        found = _discover_manifest(fs, path, source, manifest_root)
    else:
        if not fs.isdir(path):
            message = f"source {source.url} is a file; a {layout} layout needs a folder"
            raise ValueError(message)
        found = _discover_folders(fs, path, source.url, layout, class_labels)
    found.inputs.sort(key=lambda cell: (cell.patient_id, cell.uri))
    return found


def input_name(uri: str, root: str) -> str:
    """An input as a person finds it: its path under ``root`` (a :attr:`Discovery.root`), or its file
    name where it lies elsewhere or the root is unknown (runs ingested before roots were recorded).

    In the patient layout the name starts with the patient's folder: show it where patient ids
    may be shown (the terminal, the run store's reports), never in what goes to Prefect (tasks.privacy).
    """
    if "://" not in uri and not uri.startswith("/"):
        return uri  # a manifest's entry refused at discovery, as the manifest gave it: relative to the root
    prefix = root.rstrip("/") + "/"
    return (
        uri[len(prefix) :]
        if root and uri.startswith(prefix)
        else posixpath.basename(uri.rstrip("/"))
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def require_images(found: Discovery | Listing) -> None:
    """Raise :class:`NoImagesError` unless discovery found an image to decode (a
    :class:`tasks.listing.Listing` or the :class:`Discovery` it was made from).

    Called before anything is written, so that a source without images leaves no run behind; the
    message says what the source holds instead, which is what a user needs to fix it.
    """
    if found.n_inputs:
        return
    where = f"{found.source} (layout {found.layout})"
    if found.rejected:
        reasons = Counter(r["reason"] for r in found.rejected).most_common()
        message = (
            f"no usable images in {where}: {_count(len(found.rejected), 'image')}, all refused at "
            f"discovery: " + "; ".join(f"{reason} ({count})" for reason, count in reasons)
        )
    elif found.ignored:
        examples = ", ".join(posixpath.basename(url) for url in found.ignored[:3])
        message = (
            f"no images found in {where}: {_count(len(found.ignored), 'file')}, none an image by its name "
            f"or its first bytes (e.g. {examples})"
        )
    else:
        message = f"no images found in {where}: it {'lists' if found.layout == 'manifest' else 'holds'} no files"
    if found.skipped_links:
        message += (
            f"; {len(found.skipped_links)} links or folders not followed, e.g. "
            f"{found.skipped_links[0]['source_uri']}: {found.skipped_links[0]['reason']}"
        )
    raise NoImagesError(message)
