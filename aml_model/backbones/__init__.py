"""The cell backbone shipped with the package: ResNet50's first stages, pretrained on the shared cells.

``<id>.h5`` holds the layers up to the robust recipe's feature layer
(:func:`aml_model.weights.save_partial_weights`), ``<id>.json`` its card: sha256, the command that
reproduces it, its training time and settings. ``--backbone-weights shipped`` (or its id) names it.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

__all__ = ["SHIPPED", "shipped_backbone"]

#: What ``--backbone-weights`` calls the shipped backbone.
SHIPPED = "shipped"


def shipped_backbone() -> tuple[Path, dict] | None:
    """The shipped backbone's weights file and card, or None when the package holds none."""
    folder = resources.files(__name__)
    cards = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".json"))
    if not cards:
        return None
    card = json.loads(folder.joinpath(cards[-1]).read_text())
    return Path(str(folder.joinpath(card["file"]))), card
