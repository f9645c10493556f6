"""Typed configuration with the defaults of Hassan et al. in one place.

``ExperimentConfig()`` is the paper's setting; ``ExperimentConfig.tiny()`` is the small
configuration that tests and the demo use (tiny input, no pretrained weights).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from aml_model.errors import ConfigError

__all__ = [
    "DEFAULT_RECIPE",
    "FEATURE_LAYERS",
    "FEATURE_POOLINGS",
    "PRETRAIN_METHODS",
    "RECIPES",
    "SCALE_NORMALISATIONS",
    "STAIN_NORMALISATIONS",
    "AugmentConfig",
    "ExperimentConfig",
    "ModelConfig",
    "PreprocessConfig",
    "PretrainConfig",
    "RetrainConfig",
    "ScoringConfig",
    "SummaryConfig",
    "TrainConfig",
]


#: Scale normalisations of the input (ModelConfig.scale_normalisation).
ScaleNormalisation = Literal["none", "nucleus"]
SCALE_NORMALISATIONS: tuple[str, ...] = get_args(ScaleNormalisation)

#: Colour standardisations of the input (ModelConfig.stain_normalisation).
StainNormalisation = Literal["none", "channel", "grey"]
STAIN_NORMALISATIONS: tuple[str, ...] = get_args(StainNormalisation)

#: ResNet50 layers the head may read: the output of each stage (conv2 to conv5), in order.
FEATURE_LAYERS: tuple[str, ...] = ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out")

#: What the frozen part does to its last feature map (ModelConfig.feature_pooling).
FeaturePooling = Literal["none", "mean_std"]
FEATURE_POOLINGS: tuple[str, ...] = get_args(FeaturePooling)

#: Named training recipes: "paper" is Hassan et al. unchanged; "robust" adds what keeps the
#: per-patient call from depending on the lab (docs/design.md, "Recipes").
Recipe = Literal["paper", "robust"]
RECIPES: tuple[str, ...] = get_args(Recipe)
#: The recipe of the CLI and the nightly retrain.
DEFAULT_RECIPE = "robust"


def _require(condition: bool, name: str, value: object, expected: str) -> None:
    if not condition:
        message = f"{name}={value!r} is invalid: expected {expected}"
        raise ConfigError(message)


@dataclass(frozen=True)
class PreprocessConfig:
    """How raw files become model-sized RGB cells.

    Attributes:
        image_size: side of the square model input, pixels.
        max_pixels: largest accepted width*height of a source image; larger files are
            treated as decompression bombs (single cells are well under a megapixel).
        min_side: smallest accepted width or height of a source image, pixels.
        max_aspect_ratio: largest accepted long side / short side of a source image.
    """

    image_size: int = 224
    max_pixels: int = 40_000_000
    min_side: int = 16
    max_aspect_ratio: float = 8.0

    def __post_init__(self) -> None:
        _require(self.image_size >= 8, "image_size", self.image_size, "an integer >= 8")
        _require(self.max_pixels > 0, "max_pixels", self.max_pixels, "a positive integer")
        _require(self.min_side >= 1, "min_side", self.min_side, "an integer >= 1")
        _require(self.max_aspect_ratio >= 1, "max_aspect_ratio", self.max_aspect_ratio, ">= 1")


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation (the paper's ImageDataGenerator settings).

    Attributes:
        rotation_degrees: maximum rotation either way, degrees.
        width_shift: maximum horizontal shift as a fraction of the width. The paper writes a
            shift range of 2.0; as a fraction of the image that moves the cell out of frame
            entirely, so 0.2 (the value its zoom uses, and Keras' customary one) is used.
        height_shift: maximum vertical shift as a fraction of the height (see width_shift).
        zoom: maximum zoom in or out, as a fraction.
        horizontal_flip: flip left-right at random.
        vertical_flip: flip top-bottom at random.
        fill_mode: how pixels outside the source are filled ("nearest", as ImageDataGenerator).
        scale: apparent-size change on top of ``zoom``: cells are drawn at 1/(1 + scale) to
            (1 + scale) times their size. Labs scan at different microns per pixel (an LMU
            neutrophil is about 1.3-1.5x wider at 224 px than a CellaVision one), so a model
            must not read the lab from the cell's size. 0 (the paper) adds nothing.
        hue: largest hue rotation, as a fraction of the colour circle (Keras ``RandomHue``).
        saturation: saturation is scaled by a factor in [1 - saturation, 1 + saturation].
        brightness: largest brightness shift, as a fraction of the 0..255 range.
        contrast: contrast is scaled by a factor in [1 - contrast, 1 + contrast].
        stain_transfer: share of images given the L*a*b* colour statistics of a random lab
            (:class:`aml_model.stain.RandomStainTransfer`); 0 (the paper) recolours none.
    """

    rotation_degrees: float = 20.0
    width_shift: float = 0.2
    height_shift: float = 0.2
    zoom: float = 0.2
    horizontal_flip: bool = True
    vertical_flip: bool = True
    fill_mode: str = "nearest"
    scale: float = 0.0
    hue: float = 0.0
    saturation: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    stain_transfer: float = 0.0

    def __post_init__(self) -> None:
        _require(0 <= self.stain_transfer <= 1, "stain_transfer", self.stain_transfer, "a fraction in [0, 1]")
        _require(0 <= self.rotation_degrees <= 180, "rotation_degrees", self.rotation_degrees, "0..180")
        for name in ("width_shift", "height_shift", "zoom", "hue", "saturation", "brightness", "contrast"):
            value = getattr(self, name)
            _require(0 <= value < 1, name, value, "a fraction in [0, 1)")
        _require(0 <= self.scale <= 1, "scale", self.scale, "a fraction in [0, 1]")
        modes = ("nearest", "reflect", "wrap", "constant")
        _require(self.fill_mode in modes, "fill_mode", self.fill_mode, f"one of {modes}")


@dataclass(frozen=True)
class ModelConfig:
    """The network: ResNet50 backbone (frozen) + Flatten, Dense(128, relu), Dense(1, sigmoid).

    Attributes:
        image_size: side of the square RGB input, pixels (224 in the paper).
        head_units: units of the hidden Dense layer; 0 leaves it out (a logistic head).
        backbone_weights: "imagenet" (Keras' download cache under KERAS_HOME), "none"
            (random initialisation), or a local path / fsspec URL of a weights file.
        backbone_weights_sha256: expected sha256 of a weights file; checked when set.
        learning_rate: Adam learning rate.
        stain_normalisation: a layer before the backbone that standardises each image's
            colour: "none" (the paper), "channel" (each colour channel to a fixed mean and
            spread per image, which removes a lab's colour cast) or "grey" (luminance only,
            standardised). Part of the saved model, so training and scoring apply the same.
        scale_normalisation: a layer before the backbone that zooms each image about its
            nucleus to a fixed apparent size (:mod:`aml_model.scale`): "none" (the paper) or
            "nucleus". Labs differ in microns per pixel; this removes the difference. Saved in
            the model like the stain normalisation.
        feature_layer: the ResNet50 layer whose output the head reads (one of
            ``FEATURE_LAYERS``); the paper reads the last, ``conv5_block3_out``. The layers after
            it are not part of the model.
        feature_pooling: "none" (the paper: the `(h, w, c)` map, flattened by the head) or
            "mean_std" (each channel's mean and standard deviation over the map, `(2c,)`:
            :mod:`aml_model.pooling`), computed in the frozen part, so cached features are pooled.
    """

    image_size: int = 224
    head_units: int = 128
    backbone_weights: str = "imagenet"
    backbone_weights_sha256: str | None = None
    learning_rate: float = 1e-4
    stain_normalisation: str = "none"
    scale_normalisation: str = "none"
    feature_layer: str = FEATURE_LAYERS[-1]
    feature_pooling: str = "none"

    def __post_init__(self) -> None:
        # ResNet50's five stride-2 stages need at least 32 px to leave a 1x1 feature map.
        _require(self.image_size >= 32, "image_size", self.image_size, "an integer >= 32")
        _require(self.head_units >= 0, "head_units", self.head_units, "an integer >= 0")
        _require(bool(self.backbone_weights), "backbone_weights", self.backbone_weights,
                 '"imagenet", "none" or a weights file path/URL')
        if self.backbone_weights_sha256 is not None:
            digest = self.backbone_weights_sha256
            ok = len(digest) == 64 and all(c in "0123456789abcdef" for c in digest.lower())
            _require(ok, "backbone_weights_sha256", digest, "64 hexadecimal characters")
        _require(self.learning_rate > 0, "learning_rate", self.learning_rate, "a positive number")
        _require(self.stain_normalisation in STAIN_NORMALISATIONS, "stain_normalisation",
                 self.stain_normalisation, f"one of {STAIN_NORMALISATIONS}")
        _require(self.scale_normalisation in SCALE_NORMALISATIONS, "scale_normalisation",
                 self.scale_normalisation, f"one of {SCALE_NORMALISATIONS}")
        _require(self.feature_layer in FEATURE_LAYERS, "feature_layer", self.feature_layer,
                 f"one of {FEATURE_LAYERS}")
        _require(self.feature_pooling in FEATURE_POOLINGS, "feature_pooling", self.feature_pooling,
                 f"one of {FEATURE_POOLINGS}")


@dataclass(frozen=True)
class TrainConfig:
    """Fitting the head.

    Attributes:
        epochs: maximum number of epochs.
        batch_size: cells per gradient step.
        early_stopping_patience: epochs without a lower validation loss before stopping;
            the best weights are restored.
        train_fraction, val_fraction, test_fraction: the 80/10/10 split.
        seed: seeds the split, shuffling, augmentation and initialisation.
        augment: augmentation applied to training batches only.
    """

    epochs: int = 50
    batch_size: int = 32
    early_stopping_patience: int = 5
    train_fraction: float = 0.8
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        _require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _require(self.early_stopping_patience >= 0, "early_stopping_patience",
                 self.early_stopping_patience, "an integer >= 0")
        fractions = (self.train_fraction, self.val_fraction, self.test_fraction)
        _require(all(0 < f < 1 for f in fractions) and abs(sum(fractions) - 1) < 1e-9,
                 "train/val/test fractions", fractions, "three fractions in (0, 1) summing to 1")


#: What the "robust" recipe changes (chosen in benchmarks/bench_robustness.py; docs/design.md).
ROBUST_MODEL: dict[str, object] = {"stain_normalisation": "channel", "scale_normalisation": "nucleus",
                                    "feature_layer": "conv3_block4_out", "feature_pooling": "mean_std",
                                    "head_units": 0, "learning_rate": 3e-3}
ROBUST_AUGMENT: dict[str, float] = {"scale": 0.5, "hue": 0.05, "saturation": 0.5, "brightness": 0.1,
                                    "contrast": 0.3, "stain_transfer": 0.8}


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines one trained model; the defaults are the paper's.

    Attributes:
        model: the network and optimiser.
        train: fitting, split and augmentation.
        threshold: probability at or above which a cell is called blast-like.
        recipe: the named recipe the model and augmentation settings come from.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    threshold: float = 0.5
    recipe: str = "paper"

    def __post_init__(self) -> None:
        _require(0 < self.threshold < 1, "threshold", self.threshold, "a probability in (0, 1)")
        _require(self.recipe in RECIPES, "recipe", self.recipe, f"one of {RECIPES}")

    @classmethod
    def for_recipe(cls, recipe: str, model: ModelConfig | None = None,
                   train: TrainConfig | None = None) -> ExperimentConfig:
        """``model`` and ``train`` with the recipe's colour handling and augmentation.

        "paper" leaves the paper's settings as they are. "robust" zooms each cell to a fixed
        nucleus size and standardises its colour channels before the backbone; has the head read
        the channel means and spreads of the backbone's third stage instead of the last stage's
        map, standardised, through a logistic head (no hidden layer; Adam 3e-3, at which it stops
        within the default 50 epochs); and widens augmentation to the ways labs differ: scale (cell
        size per pixel), hue, saturation, brightness and contrast (stain and white balance).
        Other fields (input size, weights, epochs, seed) are kept.
        """
        _require(recipe in RECIPES, "recipe", recipe, f"one of {RECIPES}")
        model, train = model or ModelConfig(), train or TrainConfig()
        if recipe == "robust":
            model = dataclasses.replace(model, **ROBUST_MODEL)
            train = dataclasses.replace(train, augment=dataclasses.replace(train.augment, **ROBUST_AUGMENT))
        return cls(model=model, train=train, recipe=recipe)

    @classmethod
    def tiny(cls, image_size: int = 32, epochs: int = 5, seed: int = 0) -> ExperimentConfig:
        """A configuration small enough for tests and demos on two CPU cores.

        It keeps the paper's head and optimiser and changes only the input size, the
        backbone weights ("none": nothing to download) and the training length.
        """
        return cls(
            model=ModelConfig(image_size=image_size, backbone_weights="none"),
            train=TrainConfig(epochs=epochs, batch_size=16, early_stopping_patience=3, seed=seed),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (for model cards)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        train = dict(data.get("train", {}))
        train["augment"] = AugmentConfig(**train.get("augment", {}))
        return cls(
            model=ModelConfig(**data.get("model", {})),
            train=TrainConfig(**train),
            threshold=data.get("threshold", 0.5),
            recipe=data.get("recipe", "paper"),
        )


@dataclass(frozen=True)
class SummaryConfig:
    """The per-patient call rule (DESIGN.md, "Per-patient AML call").

    Attributes:
        threshold: a cell with probability >= threshold is blast-like.
        blast_cutoff: blast-like fraction at which AML is suspected (0.2: the WHO criterion).
        min_cells: fewer scored cells than this gives INSUFFICIENT_CELLS.
        confidence: level of the Clopper-Pearson interval of the blast-like fraction.
        max_quarantined_share: above this share of a patient's inputs quarantined, the summary
            carries the ``high_quarantine_rate`` QC flag. Broken files are rare (7 of 14,217 JPEGs,
            0.05%, in a public AML set), so a loss over 2% points to something systematic (an export,
            a format, a scanner); and if the lost cells were blasts, a loss of 2% moves the
            blast-like fraction by up to 2 points, a quarter of its 95% interval's half-width at
            100 cells and 20% blasts: more is worth a hematologist's look before trusting the call.
    """

    threshold: float = 0.5
    blast_cutoff: float = 0.2
    min_cells: int = 100
    confidence: float = 0.95
    max_quarantined_share: float = 0.02

    def __post_init__(self) -> None:
        _require(0 < self.threshold < 1, "threshold", self.threshold, "a probability in (0, 1)")
        _require(0 < self.blast_cutoff < 1, "blast_cutoff", self.blast_cutoff, "a fraction in (0, 1)")
        _require(self.min_cells >= 1, "min_cells", self.min_cells, "an integer >= 1")
        _require(0 < self.confidence < 1, "confidence", self.confidence, "a level in (0, 1)")
        _require(0 <= self.max_quarantined_share <= 1, "max_quarantined_share",
                 self.max_quarantined_share, "a fraction in [0, 1]")


@dataclass(frozen=True)
class ScoringConfig:
    """How a scoring runs on the workers (what it calls is :class:`SummaryConfig`).

    Attributes:
        batch_size: cells per forward pass on a worker.
        precision: "auto" (each worker picks) or an inference precision (aml_model.inference).
        chunk_cells: cells per Zarr chunk of a run's arrays.
        chunks_per_task: chunks one decoding (and scoring) task takes.
        explain_top_k: most blast-like cells per patient in the reports and Grad-CAM.
    """

    batch_size: int = 64
    precision: str = "auto"
    chunk_cells: int = 64
    chunks_per_task: int = 4
    explain_top_k: int = 12


#: Self-supervised objectives of :mod:`aml_model.pretrain`.
PretrainMethod = Literal["simclr"]
PRETRAIN_METHODS: tuple[str, ...] = get_args(PretrainMethod)


@dataclass(frozen=True)
class PretrainConfig:
    """Self-supervised pretraining of the backbone's stages on unlabelled cells (:mod:`aml_model.pretrain`).

    Attributes:
        method: the objective: "simclr" (Chen et al. 2020: two views of each cell are pulled
            together, the other cells of the batch pushed away).
        steps: optimiser steps in all (a resumed run counts the steps already done).
        batch_size: cells per step; each gives two views, the others of the batch are its negatives.
        view_size: side of the views the encoder trains on, pixels: a random square crop of
            ``min_crop`` to 1 times the cell image's side, resized. Crops near ``view_size`` /
            the model's input size show the cell at the pixel scale scoring reads it at.
        min_crop: smallest crop side as a fraction of the cell image's side.
        learning_rate: AdamW's peak learning rate, reached after ``warmup_steps`` and then
            decayed to 0 along a cosine by ``steps``.
        warmup_steps: steps of linear warm-up from 0.
        weight_decay: AdamW's decoupled weight decay.
        temperature: the contrastive loss's softmax temperature.
        projection_units: units of the projection head's hidden layer (thrown away after training).
        projection_dim: size of the projected embedding the loss compares.
        seed: seeds the initial weights (when not continued from a backbone), the batches, the
            views and the crops: a step's draws depend on the seed and the step number only.
        checkpoint_every: steps between checkpoints.
        pool_cells: most cells one training task holds in memory; batches are drawn from them.
        tone: the views' random monotone tone curve per colour channel: the largest weight of a
            random curve against the identity (:class:`aml_model.augment.RandomToneCurve`); 0 for none.
        greyscale: share of views turned grey (SimCLR's random greyscale).
        blur: the largest Gaussian blur of a view, in pixels of the view (sigma); 0 for none.
    """

    method: str = "simclr"
    steps: int = 600
    batch_size: int = 64
    view_size: int = 112
    min_crop: float = 0.5
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    temperature: float = 0.2
    projection_units: int = 256
    projection_dim: int = 128
    seed: int = 0
    checkpoint_every: int = 50
    pool_cells: int = 8192
    tone: float = 1.0
    greyscale: float = 0.2
    blur: float = 1.5

    def __post_init__(self) -> None:
        _require(self.method in PRETRAIN_METHODS, "method", self.method, f"one of {PRETRAIN_METHODS}")
        for name in ("steps", "checkpoint_every", "projection_units", "projection_dim"):
            _require(getattr(self, name) >= 1, name, getattr(self, name), "an integer >= 1")
        _require(self.batch_size >= 2, "batch_size", self.batch_size, "an integer >= 2 (a cell needs negatives)")
        _require(self.pool_cells >= self.batch_size, "pool_cells", self.pool_cells, "at least batch_size")
        _require(self.view_size >= 32, "view_size", self.view_size, "an integer >= 32")
        _require(0 < self.min_crop <= 1, "min_crop", self.min_crop, "a fraction in (0, 1]")
        _require(self.learning_rate > 0, "learning_rate", self.learning_rate, "a positive number")
        _require(0 <= self.warmup_steps < self.steps, "warmup_steps", self.warmup_steps, "0 <= warmup_steps < steps")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        _require(self.temperature > 0, "temperature", self.temperature, "a positive number")
        _require(0 <= self.tone <= 1, "tone", self.tone, "a weight in [0, 1]")
        _require(0 <= self.greyscale <= 1, "greyscale", self.greyscale, "a fraction in [0, 1]")
        _require(0 <= self.blur <= 8, "blur", self.blur, "a sigma in [0, 8] pixels")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (for backbone cards)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RetrainConfig:
    """How a retrain trains and promotes, besides the model's :class:`ExperimentConfig`.

    Attributes:
        augment_views: augmented views per training cell in the feature cache (cached path).
        training_path: "cached" (head on cached backbone features) or "plain" (backbone in the loop).
        promotion_margin: tolerated ROC AUC drop of a challenger against the champion.
    """

    augment_views: int = 2
    training_path: str = "cached"
    promotion_margin: float = 0.005
