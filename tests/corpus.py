"""Builders of small test cohorts: good cells from the real LMU set, and every kind of bad input."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image


def lmu_rows(lmu_cells: Path) -> list[dict]:
    with open(lmu_cells / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def compose_patient_cohort(
    lmu_cells: Path, root: Path, blast_counts: dict[str, tuple[int, int]]
) -> Path:
    """Patient layout from real cells: {patient_id: (n_blast, n_normal)}; no image used twice.

    Writes labels.csv (image, label) beside the patient folders. Returns ``root``.
    """
    rows = lmu_rows(lmu_cells)
    pools = {label: [r for r in rows if r["label"] == label] for label in ("blast", "normal")}
    used = {"blast": 0, "normal": 0}
    labels = []
    for patient, (n_blast, n_normal) in blast_counts.items():
        (root / patient).mkdir(parents=True, exist_ok=True)
        for label, count in (("blast", n_blast), ("normal", n_normal)):
            for row in pools[label][used[label] : used[label] + count]:
                name = f"{patient}/{Path(row['file']).name}"
                (root / name).write_bytes((lmu_cells / row["file"]).read_bytes())
                labels.append((name, label))
            used[label] += count
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label"])
        writer.writerows(labels)
    return root


def compose_class_source(lmu_cells: Path, root: Path, counts: dict[str, tuple[str, int]]) -> Path:
    """Class layout from real cells: {folder: (LMU class to copy from, n)}; no image used twice.

    Returns ``root``, holding one folder per key (e.g. ``MYO``, ``blast``, ``XYZ``).
    """
    rows = lmu_rows(lmu_cells)
    used: dict[str, int] = {}
    for folder, (code, count) in counts.items():
        (root / folder).mkdir(parents=True)
        start = used.get(code, 0)
        for row in [r for r in rows if r["matek_class"] == code][start : start + count]:
            (root / folder / Path(row["file"]).name).write_bytes(
                (lmu_cells / row["file"]).read_bytes()
            )
        used[code] = start + count
    return root


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def write_bad_corpus(root: Path, outside: Path) -> dict[str, dict]:
    """A patient-layout folder holding every kind of bad input beside valid ones.

    Returns:
        {relative name: {"kept": bool, "reason": substring of the quarantine reason}} for
        every image entry (named as an image, or with an image's first bytes); the files that
        are plainly not images (.DS_Store, Thumbs.db, README.txt, NOTES) and the empty patient
        folder are extra.
    """
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    jpeg = _encode(Image.fromarray(pixels), "JPEG")
    png = _encode(Image.fromarray(pixels), "PNG")
    deep = Image.fromarray((np.arange(48 * 48).reshape(48, 48) * 20).astype(np.uint16))
    rgba = np.dstack([pixels, np.full((48, 48), 128, np.uint8)])
    expected: dict[str, dict] = {}

    def put(name: str, data: bytes, kept: bool, reason: str = "") -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[name] = {"kept": kept, "reason": reason}

    put("P1/good.jpg", jpeg, True)
    put("P1/good.png", png, True)
    put("P1/deep16.png", _encode(deep, "PNG"), True)
    put("P1/deep16.tif", _encode(deep, "TIFF"), True)
    put("P1/palette.bmp", _encode(Image.fromarray(pixels).convert("P"), "BMP"), True)
    put("P1/alpha.png", _encode(Image.fromarray(rgba, "RGBA"), "PNG"), True)
    put("P1/grey.tiff", _encode(Image.fromarray(pixels[..., 0]), "TIFF"), True)
    put("P1/zz-copy-of-good.png", png, False, "duplicate of")  # sorts after good.png
    put("P2/good.jpg", jpeg, True)  # the same image in another patient is not a duplicate
    put("P2/zero.jpg", b"", False, "empty file")
    put("P2/truncated.jpg", jpeg[: len(jpeg) // 2], False, "truncated or corrupt")
    put("P2/truncated.png", png[: len(png) // 2], False, "truncated or corrupt")
    put("P2/page.png", b"<html><body>Forbidden</body></html>", False, "HTML")
    put("P2/notes.jpg", b"cell count 200, smear 3\n", False, "plain text")
    put("P2/anim.png", _encode(Image.fromarray(pixels), "GIF"), False, "unsupported format GIF")
    # Image files of formats the decoder does not read are quarantined, never ignored: by their
    # suffix, or (no suffix) by their first bytes.
    put(
        "P2/cell.gif",
        _encode(Image.fromarray(pixels), "GIF"),
        False,
        "unsupported format GIF (supported: ",
    )
    put("P2/cell.webp", _encode(Image.fromarray(pixels), "WEBP"), False, "unsupported format WEBP")
    put(
        "P2/cell.heic",
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64),
        False,
        "unsupported format HEIC",
    )
    put("P2/scan-0042", _encode(Image.fromarray(pixels), "GIF"), False, "unsupported format GIF")
    put("P2/line.png", _encode(Image.new("RGB", (4000, 1)), "PNG"), False, "below the minimum side")
    put("P2/bomb.png", _encode(Image.new("1", (8000, 6000)), "PNG"), False, "decompression bomb")
    os.symlink(root / "P2" / "missing-target.png", root / "P2" / "dangling.png")
    expected["P2/dangling.png"] = {"kept": False, "reason": "file not found"}
    # A link out of the source is followed: labs assemble batches from links into their archive.
    (outside / "archived.png").write_bytes(png)
    os.symlink(outside / "archived.png", root / "P2" / "linked.png")
    expected["P2/linked.png"] = {"kept": True, "reason": ""}
    (root / "P2" / "README.txt").write_text("scanner notes")
    (root / "P1" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "P1" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64))
    (root / "P2" / "NOTES").write_text("stained 2024-03-01, slide 7\n")
    (root / "P3-empty").mkdir()
    return expected
