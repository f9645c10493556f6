"""Checks of rendered HTML reports: structure with Python's HTML parser, rendering with headless Chromium."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image

DATA_PNG = "data:image/png;base64,"


@dataclass
class ParsedPage:
    """What a page holds: its tags in order, the src of each img, the href of each link, its text."""

    tags: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    text: str = ""


class _Collector(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = ParsedPage()
        self.open: list[str] = []
        self.chunks: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.page.tags.append(tag)
        values = dict(attrs)
        if tag == "img":
            self.page.images.append(values.get("src", ""))
        if tag == "a":
            self.page.links.append(values.get("href", ""))
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, (
            f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        )
        self.open.pop()

    def handle_data(self, data):
        if self.open and self.open[-1] not in ("style", "script"):
            self.chunks.append(data)


def parse_page(html: str) -> ParsedPage:
    """Parse ``html``, asserting that every element is closed in order; returns what it holds."""
    collector = _Collector()
    collector.feed(html)
    collector.close()
    assert not collector.open, f"unclosed elements: {collector.open}"
    page = collector.page
    page.text = " ".join(" ".join(collector.chunks).split())
    return page


def embedded_pngs(page: ParsedPage) -> list[Image.Image]:
    """Decode every img of the page; each must be an embedded PNG (the page stands alone)."""
    assert page.images and all(src.startswith(DATA_PNG) for src in page.images), (
        "images must be embedded PNGs"
    )
    return [Image.open(io.BytesIO(base64.b64decode(src[len(DATA_PNG) :]))) for src in page.images]


def chromium() -> str | None:
    """The Chromium executable (Debian's ``chromium`` package), or None where it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(executable: str, page: Path, png: Path, profile: Path) -> Image.Image:
    """Render a local HTML file in headless Chromium at 1200x1600 and return the screenshot (RGB)."""
    command = [
        executable,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--screenshot={png}",
        "--window-size=1200,1600",
        page.resolve().as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    return Image.open(png).convert("RGB")


def is_blank(image: Image.Image) -> bool:
    """True for an image of (nearly) one colour: the page did not render."""
    return float(np.asarray(image, np.float32).std()) < 5.0
