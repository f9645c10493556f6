"""Pretraining throughput against the forward pass alone, on real LMU cells, in one process.

Three figures of the robust recipe's encoder (ResNet50 stages 1-3 and the channel statistics):

- ``pretrain_cells_per_s``: SimCLR steps of :class:`aml_model.pretrain.Pretrainer` with the
  default settings (two augmented 112 px views a cell, forward, backward, AdamW), timed after the
  first step (which traces the graph);
- ``pretrain_forward_224_cells_per_s``: the same encoder's inference on whole 224 px cells with
  BatchNorm folded, as the feature cache embeds them (what a retrain pays per cell and view);
- ``pretrain_forward_views_cells_per_s``: its inference on two 112 px views a cell: the share of a
  step that the forward pass alone would cost.

Ratios: ``pretrain_over_forward_224`` and ``pretrain_over_forward_views`` (each below 1: how much
slower a pretraining step handles a cell). ``AML_SMEAR_BENCH_PRETRAIN_STEPS`` (default 12) sets the
timed steps; the smoke test shrinks it with ``AML_SMEAR_BENCH_IMAGE_SIZE``.
"""

from __future__ import annotations

import os
import time

import numpy as np

STEPS = int(os.environ.get("AML_SMEAR_BENCH_PRETRAIN_STEPS", "12"))
IMAGE_SIZE = int(os.environ.get("AML_SMEAR_BENCH_IMAGE_SIZE", "224"))


def real_cells(n: int, image_size: int) -> np.ndarray:
    """``n`` real LMU cells, half blasts, decoded as ingest decodes them: `(n, s, s, 3)` uint8."""
    from aml_model.preprocess import PreprocessConfig, decode_cell
    from benchmarks.common import lmu_rows, require_lmu_cells

    lmu = require_lmu_cells()
    blasts, normals = lmu_rows(lmu)
    rows = blasts[: n // 2] + normals[: n - n // 2]
    config = PreprocessConfig(image_size=image_size)
    return np.stack(
        [decode_cell((lmu / row["file"]).read_bytes(), row["file"], config) for row in rows]
    )


def forward_rate(forward, images, batch_size: int) -> float:
    """Cells per second of ``forward`` on the first ``batch_size`` of ``images``, after a warm-up."""
    import tensorflow as tf

    step = tf.function(forward, reduce_retracing=True)
    batch = tf.constant(images[:batch_size], tf.float32)
    step(batch)
    repeats = max(1, STEPS // 2)
    started = time.perf_counter()
    for _ in range(repeats):
        step(batch)
    return repeats * batch_size / (time.perf_counter() - started)


def main(context: dict) -> dict:
    from aml_model.architecture import build_backbone, input_normalisation
    from aml_model.config import ExperimentConfig, ModelConfig, PretrainConfig
    from aml_model.inference import fold_batch_norm
    from aml_model.preprocess import normalise_for_resnet50
    from aml_model.pretrain import Pretrainer
    from benchmarks.common import print_table, record

    recipe = ExperimentConfig.for_recipe(
        "robust", ModelConfig(image_size=IMAGE_SIZE, backbone_weights="none")
    )
    config = PretrainConfig(steps=STEPS + 1, view_size=max(32, IMAGE_SIZE // 2), warmup_steps=0)
    cells = real_cells(4 * config.batch_size, IMAGE_SIZE)

    pretrainer = Pretrainer(recipe.model, recipe.train.augment, config)
    pretrainer.train(cells, 1)  # traces the step
    started = time.perf_counter()
    pretrainer.train(cells, STEPS + 1)
    pretrain = STEPS * config.batch_size / (time.perf_counter() - started)

    # Whole cells as the feature cache embeds them: input normalisation, then the folded backbone.
    folded = fold_batch_norm(build_backbone(recipe.model))
    normalisation = input_normalisation(recipe.model)

    def embed(batch):
        images = normalise_for_resnet50(batch)
        for layer in normalisation:
            images = layer(images)
        return folded(images, training=False)

    forward_224 = forward_rate(embed, cells, config.batch_size)
    # The step's own views (augmented, normalised), through the folded encoder: two a cell.
    first = cells[: config.batch_size]
    views = pretrainer.views(
        first, pretrainer.cell_boxes(first), np.array([config.seed, 0], np.int64)
    ).numpy()
    encoder = fold_batch_norm(pretrainer.encoder)
    forward_views = (
        forward_rate(lambda batch: encoder(batch, training=False), views, len(views)) / 2
    )
    results = {
        "pretrain_cells_per_s": pretrain,
        "pretrain_forward_224_cells_per_s": forward_224,
        "pretrain_forward_views_cells_per_s": forward_views,
        "pretrain_over_forward_224": pretrain / forward_224,
        "pretrain_over_forward_views": pretrain / forward_views,
    }
    print_table(
        f"pretraining (SimCLR, batch {config.batch_size}, two {config.view_size} px views a cell) against "
        f"the forward pass; the robust encoder, {IMAGE_SIZE} px cells",
        [
            ("pretraining", f"{pretrain:.1f} cells/s"),
            (f"forward, whole {IMAGE_SIZE} px cells, folded", f"{forward_224:.1f} cells/s"),
            (
                f"forward, two {config.view_size} px views a cell, folded",
                f"{forward_views:.1f} cells/s",
            ),
            ("pretraining / forward (whole cells)", f"{results['pretrain_over_forward_224']:.3f}"),
            ("pretraining / forward (views)", f"{results['pretrain_over_forward_views']:.3f}"),
        ],
    )
    record(results)
    return results
