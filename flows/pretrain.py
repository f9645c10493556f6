"""The ``pretrain-backbone`` flow: cells without labels -> a registered, pretrained backbone.

Sources are ingested as for retrain (or named ingested runs of the store are read as they are);
their cells, labelled or not, each image once, train the recipe's backbone stages with SimCLR
(:mod:`aml_model.pretrain`) in tasks of ``steps_per_task`` steps on the Dask workers (the GPU
resource where the cluster has one), each resuming from the checkpoint in the store. A killed or
timed-out run, run again with the same parameters, resumes where it stopped; a finished one
returns its registered backbone and does nothing.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.ingest import ingest_sources
from flows.parameters import PretrainOptions, require_existing
from tasks.backbones import BACKBONE_CARD, backbone_folder, resolve_backbone
from tasks.devices import model_tasks
from tasks.pretrain import (
    PretrainPlan,
    pretrain_steps,
    pretraining_key,
    read_progress,
    register_backbone,
)
from tasks.store import Store, join
from tasks.store_layout import RunPaths
from tasks.training import load_training_set

__all__ = ["pretrain_backbone"]


def _complete_runs(store: Store, runs: list[str]) -> list[RunPaths]:
    """The named ingest runs, each complete (``FileNotFoundError`` naming the first that is not)."""
    paths = [store.run(run) for run in runs]
    for path in paths:
        if not store.exists(path.success):
            message = (
                f"run {path.run_id} is not a complete ingest run in {store.url} (no {path.success})"
            )
            raise FileNotFoundError(message)
    return paths


def _initial(options: PretrainOptions, store: Store) -> tuple[tuple[str, str] | None, dict]:
    """The starting weights (URL and sha256, or None for random) and what the card says of them."""
    spec = options.start_from
    if spec.lower() == "none":
        return None, {"parent": None}
    ref = resolve_backbone(spec, store)
    if ref is not None:
        return (ref.weights_url, ref.sha256), {"parent": {"id": ref.id, "sha256": ref.sha256}}
    if spec.lower() == "imagenet":
        from aml_model.weights import imagenet_weights_file, sha256_of_file

        path = imagenet_weights_file()
        return (path, sha256_of_file(path)), {"parent": {"id": "imagenet"}}
    if options.start_from_sha256 is None:
        message = f"start_from {spec} is a weights file: give its sha256 (start_from_sha256) so it can be checked"
        raise ValueError(message)
    return (spec, options.start_from_sha256.lower()), {
        "parent": {"file": spec, "sha256": options.start_from_sha256}
    }


@flow(name="pretrain-backbone", validate_parameters=True)
def pretrain_backbone(
    sources: list[str],
    store: str,
    runs: list[str] | None = None,
    options: PretrainOptions = PretrainOptions(),
    s3_endpoint_url: str | None = None,
) -> dict:
    """Pretrain the recipe's backbone stages on cells without labels, and register the backbone.

    Args:
        store: run store; the backbone is registered under ``backbones/<id>/``.
        sources: cell collections to ingest and train on (any layout; labels are not used); may be
            empty when ``runs`` names cells.
        runs: ingest runs of the store to train on as well (a lab's own scored cells).
        options: recipe, starting weights and training settings (:class:`flows.parameters.PretrainOptions`).
        s3_endpoint_url: S3-compatible endpoint for s3:// URLs.

    Returns:
        backbone_id, steps, resumed_from (the step the run started at), cells, seconds and the card.
    """
    runs = list(runs or [])
    if not sources and not runs:
        raise ValueError("pretrain-backbone needs cells: give sources, runs of the store, or both")
    locations = require_existing(
        [Store.at(source, s3_endpoint_url) for source in sources], "source"
    )
    logger = get_run_logger()
    store = Store.at(store, s3_endpoint_url)
    experiment, config = options.experiment_config(), options.pretrain_config()
    initial, parent = _initial(options, store)
    paths = _complete_runs(store, runs)
    if sources:
        paths += ingest_sources(locations, store, options.layout, options.image_size)[0]
    cells = load_training_set(paths, [*runs, *sources], labelled_only=False).cells
    cells = cells.sort_values("sha256", ignore_index=True)
    types = cells["cell_type"].fillna("unknown").value_counts().to_dict()
    plan = PretrainPlan(
        key=pretraining_key(
            cells["sha256"].tolist(),
            experiment.model,
            experiment.train.augment,
            config,
            initial[1] if initial else None,
        ),
        store=store,
        cells=cells[["cells_zarr", "zarr_index", "sha256"]],
        model=experiment.model,
        augment=experiment.train.augment,
        config=config,
        name=options.name,
        initial=initial,
        provenance={
            "recipe": options.recipe,
            "sources": sources,
            "runs": [p.run_id for p in paths],
            "cell_types": types,
            **parent,
        },
    )
    if store.exists(plan.done_url):
        backbone_id = store.read_json(plan.done_url)["backbone_id"]
        card = store.read_json(join(backbone_folder(store, backbone_id), BACKBONE_CARD))
        logger.info(
            "pretraining %s is already registered as backbone %s: nothing done",
            plan.key,
            backbone_id,
        )
        return {
            "backbone_id": backbone_id,
            "steps": card["steps"],
            "resumed_from": card["steps"],
            "cells": len(cells),
            "already_complete": True,
            "card": card,
        }
    step = resumed_from = read_progress(plan)
    logger.info(
        "pretraining %s (%s, %d cells, %d steps of %d) %s",
        plan.key,
        config.method,
        len(cells),
        config.steps,
        config.batch_size,
        f"resumes at step {step}" if step else "starts",
    )
    while step < config.steps:
        with model_tasks():
            stretch = pretrain_steps.submit(
                plan, min(step + options.steps_per_task, config.steps)
            ).result()
        step = stretch["step"]
    with model_tasks():
        card = register_backbone.submit(plan).result()
    logger.info(
        "registered backbone %s: %d steps (%.1f passes over %d cells) in %.0f s of training",
        card["id"],
        card["steps"],
        card["epochs"],
        len(cells),
        card["train_seconds"],
    )
    return {
        "backbone_id": card["id"],
        "steps": card["steps"],
        "resumed_from": resumed_from,
        "cells": len(cells),
        "already_complete": False,
        "card": card,
    }
