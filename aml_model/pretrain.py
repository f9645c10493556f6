"""Self-supervised pretraining of the backbone on unlabelled cells: SimCLR on the recipe's views.

Offline the backbone is random, and a random network's third-stage statistics rank blasts against
other cells of an unseen lab poorly. Labels are few (two labs, two kinds of label); cells without
labels are many. SimCLR (Chen et al. 2020) learns from them alone: two random views of each cell
in a batch are pulled together and pushed away from the views of the batch's other cells, so the
features keep what survives the views' changes (shape, chromatin, granules) and drop what the
views change. The views come from the recipe's own augmentation (stain transfer after RandStainNA,
hue, saturation, brightness, contrast, rotation, shifts, zoom, scale, flips) and a random crop, so
the invariance to a lab's colour and scale is learnt by construction.

Why SimCLR and not BYOL, VICReg or DINO: on two CPU cores a run holds batches of tens of cells,
where BYOL and DINO need a momentum teacher (a second forward pass per view) and VICReg a wide
projector (8,192 units in its paper) to avoid collapse; SimCLR with a low temperature has been
shown to work at small batches on cell images, and a probe on these cells (issue #26) moved a
hidden lab's blast ranking from ROC AUC 0.79 to 0.87 with it. DinoBloom (Koch et al. 2024)
trains DINOv2 on blood cells with many GPUs; its lesson taken here is that blood-cell features
come from blood cells.

The encoder is ResNet50 up to the recipe's feature layer, pooled as the recipe pools it, with the
recipe's input normalisation in front: the contrastive loss shapes exactly what the head will
read. A two-layer projection head sits on top during training only (Chen et al.: the
representation before the projection transfers better). A view is a random crop of ``min_crop`` to
1 times the side of the window the recipe's scale normalisation zooms to, resized to ``view_size``
in one resampling, then augmented: a 112 px view of a 224 px cell sees it at scoring's pixel scale
down to half of it, and every per-step image operation works on a quarter of a whole cell's pixels.

A step's draws (its cells, augmentation and crops) depend only on the seed and the step number,
so a run resumed from a checkpoint continues as the uninterrupted run would have.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from aml_model.architecture import input_normalisation, seed_weights
from aml_model.config import AugmentConfig, ModelConfig, PretrainConfig
from aml_model.errors import PretrainingDivergedError
from aml_model.pooling import SpatialMeanStd
from aml_model.preprocess import normalise_for_resnet50
from aml_model.scale import ScaleNormalisation, nucleus_boxes
from aml_model.weights import load_backbone_weights

__all__ = [
    "PretrainState",
    "Pretrainer",
    "nt_xent",
    "recalibrate_batch_norm",
    "trained_backbone",
    "view_augmenter",
]

logger = logging.getLogger(__name__)


@dataclass
class PretrainState:
    """Where a pretraining is: everything a resumed run needs.

    Attributes:
        step: optimiser steps done.
        weights: the encoder's weights, then the projection head's (Keras ``get_weights`` order).
        optimizer: the optimiser's variables (step count, moments), in its order.
        losses: the loss of every step done, for the card and the progress log.
        seconds: training time of the steps done, seconds (over every resumed stretch).
    """

    step: int
    weights: list[np.ndarray]
    optimizer: list[np.ndarray]
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_bytes(self) -> bytes:
        """The state as one ``.npz`` file's bytes."""
        arrays = {f"w{i}": w for i, w in enumerate(self.weights)}
        arrays |= {f"o{i}": v for i, v in enumerate(self.optimizer)}
        buffer = io.BytesIO()
        np.savez(
            buffer,
            step=np.int64(self.step),
            losses=np.asarray(self.losses, np.float32),
            seconds=np.float64(self.seconds),
            n_weights=len(self.weights),
            n_optimizer=len(self.optimizer),
            **arrays,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> PretrainState:
        """Inverse of :meth:`to_bytes`."""
        with np.load(io.BytesIO(data)) as archive:
            return cls(
                int(archive["step"]),
                [archive[f"w{i}"] for i in range(int(archive["n_weights"]))],
                [archive[f"o{i}"] for i in range(int(archive["n_optimizer"]))],
                [float(x) for x in archive["losses"]],
                float(archive["seconds"]),
            )


def view_augmenter(augment: AugmentConfig, config: PretrainConfig) -> keras.Sequential:
    """The recipe's augmentation, then the pretraining's own: a random tone curve per channel,
    greyscale and blur (SimCLR's colour dropping and blur; each only when its setting is above 0).

    Returns:
        A ``keras.Sequential`` taking and returning `(batch, v, v, 3)` float views in 0..255.
    """
    from aml_model.augment import RandomToneCurve, build_augmenter

    layers = list(build_augmenter(augment, seed=config.seed).layers)
    if config.tone:
        layers.append(RandomToneCurve(config.tone, seed=config.seed, name="random_tone"))
    if config.greyscale:
        layers.append(keras.layers.RandomGrayscale(config.greyscale, seed=config.seed))
    if config.blur:
        # A kernel of about 2 sigma either side; the factor draws how much of it each view gets.
        kernel = 2 * int(np.ceil(2 * config.blur)) + 1
        layers.append(
            keras.layers.RandomGaussianBlur(
                1.0, kernel_size=kernel, sigma=(0.1, config.blur), seed=config.seed
            )
        )
    return keras.Sequential(layers, name="views")


class Pretrainer:
    """SimCLR training of ResNet50's stages up to the recipe's feature layer.

    Args:
        model: the recipe's model configuration: input size (that of the cells), input
            normalisation, feature layer and pooling.
        augment: the recipe's augmentation, which makes the views.
        config: the pretraining settings.
        initial_weights: a local weights file to start from (a whole ResNet50, or a partial file
            of :func:`aml_model.weights.save_partial_weights`); random (from ``config.seed``) if None.
    """

    def __init__(
        self,
        model: ModelConfig,
        augment: AugmentConfig,
        config: PretrainConfig,
        initial_weights: str | None = None,
    ) -> None:
        self.model, self.config = model, config
        whole = keras.applications.ResNet50(
            include_top=False, weights=None, input_shape=(config.view_size, config.view_size, 3)
        )
        seed_weights(whole, config.seed)
        if initial_weights is not None:
            load_backbone_weights(whole, initial_weights, model.feature_layer)
        self.encoder = _encoder(whole, model)
        self.projector = keras.Sequential(
            [
                keras.Input(tuple(self.encoder.output.shape[1:])),
                keras.layers.Dense(
                    config.projection_units, activation="relu", name="projection_hidden"
                ),
                keras.layers.Dense(config.projection_dim, name="projection"),
            ],
            name="projector",
        )
        seed_weights(self.projector, config.seed + 1)
        decay = max(1, config.steps - config.warmup_steps)
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0 if config.warmup_steps else config.learning_rate,
            decay,
            warmup_target=config.learning_rate if config.warmup_steps else None,
            warmup_steps=config.warmup_steps,
        )
        self.optimizer = keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)
        self.variables = self.encoder.trainable_variables + self.projector.trainable_variables
        self.optimizer.build(self.variables)
        self.augmenter = view_augmenter(augment, config)
        self._seed_states = [
            v for v in self.augmenter.variables if v.name == "seed_generator_state"
        ]
        # The scale normalisation acts through the crops' windows (views), the rest as layers.
        self.normalisation = [
            layer
            for layer in input_normalisation(model)
            if not isinstance(layer, ScaleNormalisation)
        ]
        self.step_number = 0
        self.losses: list[float] = []
        self.seconds = 0.0
        self._train_step = tf.function(self._step, reduce_retracing=True)

    def cell_boxes(self, pool: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """`(n, 4)` float32: the window of each cell that the recipe's scale normalisation zooms to
        (y0, x0, y1, x1 in fractions of the side), or the whole image when it has none."""
        if self.model.scale_normalisation == "none":
            return np.tile(np.array([0, 0, 1, 1], np.float32), (len(pool), 1))
        return np.concatenate(
            [
                nucleus_boxes(
                    tf.constant(pool[start : start + batch_size], tf.float32), 0.0
                ).numpy()
                for start in range(0, len(pool), batch_size)
            ]
        )

    def views(self, images: tf.Tensor, boxes: tf.Tensor, crop_seed: tf.Tensor) -> tf.Tensor:
        """Two views of each cell, in the encoder's input space.

        Each view is a random square crop (``min_crop`` to 1 of the side) of the cell's
        scale-normalised window (``boxes``), taken from the cell in one resampling at the view
        size, then augmented and colour-standardised as the recipe does: the scale normalisation
        and every augmentation act on views, a quarter of the pixels of whole cells.

        Args:
            images: `(batch, s, s, 3)` uint8 cells.
            boxes: `(batch, 4)` their windows (:meth:`cell_boxes`).
            crop_seed: the step's seed of the crops.

        Returns:
            `(2 * batch, v, v, 3)` float32: the first views of every cell, then the second ones.
        """
        batch = tf.shape(images)[0]
        draws = tf.random.stateless_uniform((2 * batch, 3), crop_seed)
        side = self.config.min_crop + (1.0 - self.config.min_crop) * draws[:, 0]
        top, left = draws[:, 1] * (1.0 - side), draws[:, 2] * (1.0 - side)
        window = tf.concat([boxes, boxes], axis=0)
        height, width = window[:, 2] - window[:, 0], window[:, 3] - window[:, 1]
        y0, x0 = window[:, 0] + top * height, window[:, 1] + left * width
        crops = tf.stack([y0, x0, y0 + side * height, x0 + side * width], axis=1)
        cells = tf.concat([tf.range(batch), tf.range(batch)], axis=0)
        views = tf.image.crop_and_resize(
            tf.cast(images, tf.float32),
            crops,
            cells,
            (self.config.view_size, self.config.view_size),
        )
        views = normalise_for_resnet50(self.augmenter(views, training=True))
        for layer in self.normalisation:
            views = layer(views)
        return views

    def _step(self, images: tf.Tensor, boxes: tf.Tensor, crop_seed: tf.Tensor) -> tf.Tensor:
        views = self.views(images, boxes, crop_seed)
        batch = tf.shape(images)[0]
        with tf.GradientTape() as tape:
            embedded = tf.math.l2_normalize(
                tf.cast(self.projector(self.encoder(views, training=True)), tf.float32), axis=1
            )
            loss = nt_xent(embedded, batch, self.config.temperature)
        gradients = tape.gradient(loss, self.variables)
        self.optimizer.apply_gradients(zip(gradients, self.variables, strict=True))
        return loss

    def _seed_step(self, step: int) -> tf.Tensor:
        """Set every draw of step ``step`` from the seed and the step number alone."""
        for index, state in enumerate(self._seed_states):
            # Each layer's generator advances by one per draw; 1,024 apart leaves room for many.
            state.assign(np.array([self.config.seed * 1_000 + index, step * 1_024], np.int64))
        return tf.constant([self.config.seed, step], tf.int64)

    def batch_indices(self, step: int, n_cells: int) -> np.ndarray:
        """The pool positions step ``step`` trains on (sorted)."""
        rng = np.random.default_rng([self.config.seed, step])
        size = self.config.batch_size
        return np.sort(rng.choice(n_cells, size, replace=n_cells < size))

    def train(
        self,
        pool: np.ndarray,
        until: int,
        on_checkpoint: Callable[[PretrainState], None] | None = None,
        on_progress: Callable[[int, float], None] | None = None,
    ) -> PretrainState:
        """Train from the current step up to step ``until`` (at most ``config.steps``).

        Args:
            pool: `(n, s, s, 3)` uint8 cells at the model's input size; each step draws
                ``batch_size`` of them.
            until: the step to stop at.
            on_checkpoint: called with the state every ``checkpoint_every`` steps and at the end.
            on_progress: called with (step, loss) after every step.

        Returns:
            The state at ``until``.
        """
        if pool.shape[1:] != (self.model.image_size, self.model.image_size, 3):
            message = (
                f"pretraining cells are {pool.shape[1:]}, the model's input is "
                f"({self.model.image_size}, {self.model.image_size}, 3)"
            )
            raise ValueError(message)
        until = min(until, self.config.steps)
        started, seconds_before = time.perf_counter(), self.seconds
        boxes = self.cell_boxes(pool) if self.step_number < until else None
        while self.step_number < until:
            crop_seed = self._seed_step(self.step_number)
            batch = self.batch_indices(self.step_number, len(pool))
            loss = float(
                self._train_step(tf.constant(pool[batch]), tf.constant(boxes[batch]), crop_seed)
            )
            if not np.isfinite(loss):
                message = f"pretraining loss is {loss} at step {self.step_number}: lower the learning rate"
                raise PretrainingDivergedError(message)
            self.step_number += 1
            self.losses.append(loss)
            self.seconds = seconds_before + time.perf_counter() - started
            if on_progress is not None:
                on_progress(self.step_number, loss)
            if on_checkpoint is not None and (
                self.step_number % self.config.checkpoint_every == 0 or self.step_number == until
            ):
                on_checkpoint(self.state())
        return self.state()

    def state(self) -> PretrainState:
        """A copy of the current state."""
        return PretrainState(
            self.step_number,
            self.encoder.get_weights() + self.projector.get_weights(),
            [np.asarray(v) for v in self.optimizer.variables],
            list(self.losses),
            self.seconds,
        )

    def restore(self, state: PretrainState) -> None:
        """Continue from ``state`` (of a pretrainer with the same settings)."""
        n_encoder = len(self.encoder.get_weights())
        self.encoder.set_weights(state.weights[:n_encoder])
        self.projector.set_weights(state.weights[n_encoder:])
        for variable, value in zip(self.optimizer.variables, state.optimizer, strict=True):
            variable.assign(value)
        self.step_number, self.losses, self.seconds = state.step, list(state.losses), state.seconds


def nt_xent(embedded: tf.Tensor, batch: tf.Tensor, temperature: float) -> tf.Tensor:
    """SimCLR's normalised temperature-scaled cross-entropy.

    Args:
        embedded: `(2 * batch, d)` unit vectors, the first views of ``batch`` cells, then their
            second views.
        batch: the number of cells.
        temperature: softmax temperature.

    Returns:
        The mean over the 2 * batch views of -log softmax of its partner's similarity among all
        other views'.
    """
    similarity = tf.matmul(embedded, embedded, transpose_b=True) / temperature
    similarity -= 1e9 * tf.eye(2 * batch)
    partners = tf.concat([tf.range(batch, 2 * batch), tf.range(batch)], axis=0)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(partners, similarity))


def _encoder(whole: keras.Model, model: ModelConfig) -> keras.Model:
    """The part of a whole ResNet50 that the recipe reads, pooled as the recipe pools it (its layers shared)."""
    features = whole.get_layer(model.feature_layer).output
    pooling = (
        SpatialMeanStd()
        if model.feature_pooling == "mean_std"
        else keras.layers.GlobalAveragePooling2D()
    )
    return keras.Model(whole.input, pooling(features), name="encoder")


def trained_backbone(
    state: PretrainState, model: ModelConfig, config: PretrainConfig
) -> keras.Model:
    """A whole ResNet50 at the model's input size holding the state's trained stages.

    Convolutions do not depend on the input size, so the weights trained on views transfer as
    they are. The layers after ``model.feature_layer`` are drawn from ``config.seed`` (nothing
    reads them).
    """
    whole = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(model.image_size, model.image_size, 3)
    )
    seed_weights(whole, config.seed)
    encoder = _encoder(whole, model)
    encoder.set_weights(state.weights[: len(encoder.weights)])
    return whole


def recalibrate_batch_norm(
    backbone: keras.Model,
    model: ModelConfig,
    cells: np.ndarray,
    batch_size: int = 64,
    passes: int = 2,
) -> keras.Model:
    """Re-estimate every BatchNorm's moving statistics on the cells as scoring shows them.

    Training saw augmented crops at another size; scoring sees whole cells at the model's input
    size through the recipe's input normalisation. Running the backbone in training mode over
    those cells with a short memory (momentum 0.9) replaces the statistics with theirs
    (precise BatchNorm, Wu and Johnson 2021; FixRes, Touvron et al. 2019).

    Args:
        backbone: a whole ResNet50 at the model's input size (changed in place).
        model: the input size and normalisation.
        cells: `(n, s, s, 3)` uint8 cells.
        batch_size: cells per forward pass.
        passes: passes over the cells.

    Returns:
        ``backbone``.
    """
    layers = [
        layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.9
    normalisation = input_normalisation(model)

    # No AutoGraph: the loop over the layers is Python's, and AutoGraph cannot read this closure.
    @tf.function(reduce_retracing=True, autograph=False)
    def update(images):
        images = normalise_for_resnet50(tf.cast(images, tf.float32))
        for layer in normalisation:
            images = layer(images)
        backbone(images, training=True)

    rng = np.random.default_rng(0)
    for _ in range(passes):
        order = rng.permutation(len(cells))
        for start in range(
            0, len(cells) - batch_size + 1 if len(cells) >= batch_size else 1, batch_size
        ):
            update(tf.constant(cells[np.sort(order[start : start + batch_size])]))
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    return backbone
