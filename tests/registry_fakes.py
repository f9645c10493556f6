"""Small registry entries written as the flows write them, without training a model.

The registry operations only check that ``model.keras`` exists; its bytes here are a stand-in.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from tasks.registry import CARD_FILE, MODEL_FILE, models_root
from tasks.store import Store, join


def stand_in_keras_file(path: Path, image_size: int = 32) -> Path:
    """A file with just the part of a .keras archive the registry reads: its input size."""
    layers = [{"config": {"batch_shape": [None, image_size, image_size, 3]}}]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps({"config": {"layers": layers}}))
    return path


def fake_model(
    store: Store, version: str, roc_auc: float = 0.9, data_sha256: str = "d" * 64, card: bool = True
) -> str:
    """Register ``version`` (``YYYYmmddTHHMMSSZ-...`` names sort by time) with a minimal card; returns its folder."""
    folder = join(models_root(store), version)
    store.write_bytes(join(folder, MODEL_FILE), b"stand-in for a .keras file")
    if card:
        registered = f"{version[0:4]}-{version[4:6]}-{version[6:8]}T{version[9:11]}:{version[11:13]}:00+00:00"
        store.write_json(
            join(folder, CARD_FILE),
            {
                "version": version,
                "registered_at": registered,
                "recipe": "paper",
                "config": {"model": {"image_size": 32}},
                "metrics": {
                    "n": 200,
                    "threshold": 0.5,
                    "accuracy": 0.9,
                    "sensitivity": 0.85,
                    "specificity": 0.95,
                    "precision": 0.9,
                    "f1": 0.87,
                    "roc_auc": roc_auc,
                },
                "data": {"sha256": data_sha256, "n_labelled": 1000, "sources": ["/data/labelled"]},
                "split": {"by": "cell", "seed": 0},
                "code_version": {"package": "0.1.0", "commit": "c" * 40, "dirty": False},
            },
        )
    return folder


def fake_scoring(store: Store, where: str, version: str) -> None:
    """A scoring record under runs/ (``where`` is its folder below runs/) that used ``version``."""
    store.write_json(
        join(store.runs, where, "score.json"), {"model_version": version, "threshold": 0.5}
    )
