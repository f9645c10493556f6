"""Pretraining tasks: train the backbone's stages a stretch of steps at a time, checkpointed; register it.

A pretraining is named by its work key (:func:`pretraining_key`: the cells, the settings and the
starting backbone), and keeps ``backbones/_pretraining/<key>/`` in the store: ``state.npz`` (the
weights, optimiser state and losses after the last checkpoint, :class:`aml_model.pretrain.PretrainState`)
and, once registered, ``done.json`` naming the backbone. Each :func:`pretrain_steps` task starts
from the checkpoint, so a killed worker, a timed-out flow run or a rerun loses at most
``checkpoint_every`` steps and ends with the same number of steps; a pretraining whose
backbone is registered is not run again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from prefect import get_run_logger

from aml_model.config import AugmentConfig, ModelConfig, PretrainConfig
from aml_model.weights import sha256_of_file
from tasks.backbones import BACKBONE_CARD, BACKBONE_WEIGHTS, backbone_folder, backbones_root
from tasks.registry import code_version
from tasks.retry import store_task
from tasks.store import Store, join
from tasks.training import cell_rows
from tasks.weights import fetch_weights_file

__all__ = [
    "PretrainPlan",
    "pretraining_key",
    "pretrain_steps",
    "read_progress",
    "register_backbone",
]

STATE_FILE = "state.npz"
DONE_FILE = "done.json"
#: Steps between progress lines in the log.
LOG_EVERY = 25
#: Cells the BatchNorm statistics of a registered backbone are re-estimated on (two passes).
RECALIBRATION_CELLS = 1024


@dataclass(frozen=True)
class PretrainPlan:
    """One pretraining: what it trains on, how, where its checkpoint lives.

    Attributes:
        key: the work key (:func:`pretraining_key`).
        store: the store holding ``backbones/`` (its options also reach the cells and the starting weights).
        cells: cells_zarr, zarr_index and sha256 of every cell, sorted by sha256 (one row per image).
        model: the recipe's model configuration (input size, normalisation, feature layer, pooling).
        augment: the recipe's augmentation (the views).
        config: the pretraining settings.
        name: the registered id's prefix.
        initial: the starting weights file (path or URL) and its sha256, or None for random.
        provenance: sources, runs, the starting backbone and cell-type counts, for the card.
    """

    key: str
    store: Store
    cells: pd.DataFrame
    model: ModelConfig
    augment: AugmentConfig
    config: PretrainConfig
    name: str
    initial: tuple[str, str] | None
    provenance: dict

    @property
    def work(self) -> str:
        return join(backbones_root(self.store), "_pretraining", self.key)

    @property
    def state_url(self) -> str:
        return join(self.work, STATE_FILE)

    @property
    def done_url(self) -> str:
        return join(self.work, DONE_FILE)


def pretraining_key(
    cell_hashes: list[str],
    model: ModelConfig,
    augment: AugmentConfig,
    config: PretrainConfig,
    initial_sha256: str | None,
) -> str:
    """16 hex digits naming a pretraining: the same cells, settings and start make the same key."""
    payload = json.dumps(
        {
            "cells": hashlib.sha256("\n".join(sorted(cell_hashes)).encode()).hexdigest(),
            "model": _recipe_fields(model),
            "augment": dataclasses.asdict(augment),
            "config": config.to_dict(),
            "initial": initial_sha256,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _recipe_fields(model: ModelConfig) -> dict:
    """What of the model a backbone is trained for: all but the weights it starts from."""
    return {
        key: value
        for key, value in dataclasses.asdict(model).items()
        if key not in ("backbone_weights", "backbone_weights_sha256")
    }


def read_progress(plan: PretrainPlan) -> int:
    """Steps done by the plan's last checkpoint (0 without one)."""
    from aml_model.pretrain import PretrainState

    if not plan.store.exists(plan.state_url):
        return 0
    return PretrainState.from_bytes(plan.store.read_bytes(plan.state_url)).step


def _pool(plan: PretrainPlan, start: int) -> np.ndarray:
    """The cells this stretch trains on: all of them, or a sample of ``pool_cells`` drawn from the
    seed and the first step (so a resumed stretch holds the cells the killed one held)."""
    positions = np.arange(len(plan.cells))
    if len(positions) > plan.config.pool_cells:
        rng = np.random.default_rng([plan.config.seed, start, 1])
        positions = np.sort(rng.choice(positions, plan.config.pool_cells, replace=False))
    return cell_rows(plan.cells.iloc[positions], plan.store)[np.arange(len(positions))]


def _initial_file(plan: PretrainPlan) -> str | None:
    if plan.initial is None:
        return None
    url, sha256 = plan.initial
    # Checked against the recorded sha256, from the machine's cache when the file is remote.
    return fetch_weights_file(plan.store, url, sha256)


@store_task("pretrain-steps")
def pretrain_steps(plan: PretrainPlan, until: int) -> dict:
    """Train from the plan's checkpoint up to step ``until``, checkpointing as it goes.

    Returns:
        step (reached), loss (mean of the stretch's last steps), seconds and cells_per_s (two
        views a cell) of this stretch.
    """
    from aml_model.pretrain import Pretrainer, PretrainState

    logger = get_run_logger()
    pretrainer = Pretrainer(plan.model, plan.augment, plan.config, _initial_file(plan))
    if plan.store.exists(plan.state_url):
        pretrainer.restore(PretrainState.from_bytes(plan.store.read_bytes(plan.state_url)))
        logger.info(
            "resuming pretraining %s from its checkpoint at step %d",
            plan.key,
            pretrainer.step_number,
        )
    start_step = pretrainer.step_number
    pool = _pool(plan, start_step)
    started = time.perf_counter()

    def checkpoint(state: PretrainState) -> None:
        plan.store.write_bytes(plan.state_url, state.to_bytes())

    def progress(step: int, _loss: float) -> None:
        if step % LOG_EVERY == 0 or step == until:
            done = step - start_step
            rate = done * plan.config.batch_size / (time.perf_counter() - started)
            left = (plan.config.steps - step) * plan.config.batch_size / rate
            logger.info(
                "pretraining step %d/%d: loss %.3f, %.1f cells/s, about %.0f min left",
                step,
                plan.config.steps,
                float(np.mean(pretrainer.losses[-LOG_EVERY:])),
                rate,
                left / 60,
            )

    state = pretrainer.train(pool, until, on_checkpoint=checkpoint, on_progress=progress)
    seconds = time.perf_counter() - started
    done = state.step - start_step
    return {
        "step": state.step,
        "loss": float(np.mean(state.losses[-LOG_EVERY:])) if state.losses else None,
        "seconds": seconds,
        "cells_per_s": done * plan.config.batch_size / seconds if done else None,
    }


@store_task("register-backbone")
def register_backbone(plan: PretrainPlan) -> dict:
    """Register the finished pretraining as ``backbones/<id>/``: weights, then the card.

    The trained stages go into a whole ResNet50 at the model's input size, whose BatchNorm
    statistics are re-estimated on the cells as scoring shows them
    (:func:`aml_model.pretrain.recalibrate_batch_norm`); the layers up to the feature layer are
    written (:func:`aml_model.weights.save_partial_weights`). The id is the plan's name and its
    work key; ``done.json`` then points the work key at it.

    Returns:
        The card.
    """
    from aml_model.pretrain import PretrainState, recalibrate_batch_norm, trained_backbone
    from aml_model.weights import save_partial_weights

    state = PretrainState.from_bytes(plan.store.read_bytes(plan.state_url))
    if state.step != plan.config.steps:
        message = f"pretraining {plan.key} is at step {state.step} of {plan.config.steps}: it cannot be registered"
        raise RuntimeError(message)
    backbone = trained_backbone(state, plan.model, plan.config)
    # The pool is in sha256 order, so its first cells are a sample of all of them.
    pool = _pool(plan, plan.config.steps)[:RECALIBRATION_CELLS]
    recalibrate_batch_norm(backbone, plan.model, pool)
    with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, BACKBONE_WEIGHTS)
        save_partial_weights(backbone, plan.model.feature_layer, local)
        sha256 = sha256_of_file(local)
        # Named by the work key, not the bytes: the re-estimated BatchNorm statistics may differ in
        # their last bits from one attempt to the next, and a retried registration must land in
        # the same folder.
        backbone_id = f"{plan.name}-{plan.key[:12]}"
        target = backbone_folder(plan.store, backbone_id)
        with open(local, "rb") as handle:
            plan.store.write_bytes(join(target, BACKBONE_WEIGHTS), handle.read())
    losses = np.asarray(state.losses)
    window = min(len(losses), 100)
    card = {
        "id": backbone_id,
        "sha256": sha256,
        "file": BACKBONE_WEIGHTS,
        "method": plan.config.method,
        "layers_up_to": plan.model.feature_layer,
        "image_size": plan.model.image_size,
        "model": _recipe_fields(plan.model),
        "pretrain": plan.config.to_dict(),
        "augmentation": dataclasses.asdict(plan.augment),
        "steps": state.step,
        "cells": len(plan.cells),
        "epochs": state.step * plan.config.batch_size / len(plan.cells),
        "loss": {"first": float(losses[:window].mean()), "last": float(losses[-window:].mean())},
        "batch_norm": f"re-estimated on {len(pool)} cells at {plan.model.image_size} px",
        "train_seconds": state.seconds,
        "work_key": plan.key,
        **plan.provenance,
        "code_version": code_version(),
        "created_at": datetime.now(UTC).isoformat(),
    }
    plan.store.write_json(join(target, BACKBONE_CARD), card)
    plan.store.write_json(plan.done_url, {"backbone_id": backbone_id})
    return card
