"""Typed configuration with the defaults of Hassan et al. in one place, each bound stated once.

``ExperimentConfig()`` is the paper's setting; ``ExperimentConfig.tiny()`` is the small
configuration that tests and the demo use (tiny input, no pretrained weights).

The classes are frozen dataclasses validated by pydantic: a field's type (``Positive``,
``Probability``, ``ImageSize``...) carries its bounds, and the flows' typed options
(:mod:`flows.parameters`) use the same types, so a bound is written here only. A value outside
its bounds raises :class:`~aml_model.errors.ConfigError` naming the field, the value and what it
accepts (``image_size=16 is invalid: expected an integer in [32, 1024]``); an unknown field is a
``TypeError``, as for any dataclass.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Iterable
from dataclasses import field
from typing import (
    Annotated,
    Any,
    Literal,
    TypeVar,
    Union,
    dataclass_transform,
    get_args,
    get_origin,
)

import pydantic.dataclasses
from pydantic import ConfigDict, Field, SecretStr, ValidationError
from pydantic.fields import FieldInfo

from aml_model.errors import ConfigError

__all__ = [
    "DEFAULT_RECIPE",
    "FEATURE_LAYERS",
    "FEATURE_POOLINGS",
    "PRETRAIN_METHODS",
    "RECIPES",
    "SCALE_NORMALISATIONS",
    "SHA256_PATTERN",
    "STAIN_NORMALISATIONS",
    "AugmentConfig",
    "AugmentViews",
    "BackboneWeights",
    "BlurSigma",
    "CropFraction",
    "ExperimentConfig",
    "FeatureLayer",
    "FillMode",
    "ImageSize",
    "Jitter",
    "ModelConfig",
    "NonNegative",
    "Positive",
    "PositiveNumber",
    "Precision",
    "PreprocessConfig",
    "PretrainBatchSize",
    "PretrainConfig",
    "Probability",
    "RetrainConfig",
    "ScoringConfig",
    "Seed",
    "Sha256",
    "Share",
    "SummaryConfig",
    "TrainConfig",
    "TrainingPath",
    "accepted",
]


#: Scale normalisations of the input (ModelConfig.scale_normalisation).
ScaleNormalisation = Literal["none", "nucleus"]
SCALE_NORMALISATIONS: tuple[str, ...] = get_args(ScaleNormalisation)

#: Colour standardisations of the input (ModelConfig.stain_normalisation).
StainNormalisation = Literal["none", "channel", "grey"]
STAIN_NORMALISATIONS: tuple[str, ...] = get_args(StainNormalisation)

#: ResNet50 layers the head may read: the output of each stage (conv2 to conv5), in order.
FeatureLayer = Literal[
    "conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"
]
FEATURE_LAYERS: tuple[str, ...] = get_args(FeatureLayer)

#: What the frozen part does to its last feature map (ModelConfig.feature_pooling).
FeaturePooling = Literal["none", "mean_std"]
FEATURE_POOLINGS: tuple[str, ...] = get_args(FeaturePooling)

#: Named training recipes: "paper" is Hassan et al. unchanged; "robust" adds what keeps the
#: per-patient call from depending on the lab (docs/design.md, "Recipes").
Recipe = Literal["paper", "robust"]
RECIPES: tuple[str, ...] = get_args(Recipe)
#: The recipe of the CLI and the nightly retrain.
DEFAULT_RECIPE = "robust"

#: Ways of filling the pixels an augmentation moves in from outside the image (AugmentConfig.fill_mode).
FillMode = Literal["nearest", "reflect", "wrap", "constant"]
#: "auto" (each worker picks) and the inference precisions (aml_model.inference.INFERENCE_PRECISIONS;
#: a test keeps them equal: importing that module imports TensorFlow).
Precision = Literal["auto", "float32", "bfloat16", "float16"]
#: How a retrain fits the head: on cached backbone features, or with the backbone in the loop.
TrainingPath = Literal["cached", "plain"]

# The bounds of every setting, each stated once: the configuration classes below and the flows'
# typed options (flows.parameters) use these types.

#: An integer of at least 1 (cells, epochs, steps, batch and chunk sizes).
Positive = Annotated[int, Field(ge=1)]
#: An integer of at least 0 (patience, head units, warm-up steps).
NonNegative = Annotated[int, Field(ge=0)]
#: A number above 0 (learning rates, temperatures).
PositiveNumber = Annotated[float, Field(gt=0)]
#: A probability or fraction strictly between 0 and 1 (thresholds, cut-offs, confidence levels).
Probability = Annotated[float, Field(gt=0, lt=1)]
#: A share of a whole, 0 and 1 included.
Share = Annotated[float, Field(ge=0, le=1)]
#: A fraction from 0 up to, not including, 1 (the shifts, zoom and colour jitter of augmentation).
Jitter = Annotated[float, Field(ge=0, lt=1)]
#: The side of a square model input or training view, pixels: ResNet50's five stride-2 stages need
#: 32 at least to leave a 1x1 feature map; 1024 at most (the paper's is 224).
ImageSize = Annotated[int, Field(ge=32, le=1024)]
#: A seed numpy and TensorFlow accept (aml_model.collapse.attempt_seed keeps derived seeds in range).
Seed = Annotated[int, Field(ge=0, lt=2**32)]
#: A sha256 digest, hexadecimal.
SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"
Sha256 = Annotated[str, Field(pattern=SHA256_PATTERN)]
#: "imagenet", "none", or the path/URL of a weights file.
BackboneWeights = Annotated[str, Field(min_length=1)]
#: Augmented views per training cell in a retrain's feature cache.
AugmentViews = Annotated[int, Field(ge=0, le=64)]
#: Cells per pretraining step: each cell needs the others of its batch as negatives.
PretrainBatchSize = Annotated[int, Field(ge=2)]
#: The smallest crop of a pretraining view, as a fraction of the cell image's side.
CropFraction = Annotated[float, Field(gt=0, le=1)]
#: The largest Gaussian blur of a pretraining view, sigma in pixels of the view.
BlurSigma = Annotated[float, Field(ge=0, le=8)]

_PATTERN_WORDS = {SHA256_PATTERN: "64 hexadecimal characters"}
_BOUNDS = ("ge", "gt", "le", "lt", "min_length", "pattern")


def _constraints(metadata: Iterable[Any]) -> dict[str, Any]:
    """The bounds in a field's pydantic metadata, by name (``{"ge": 1}``...)."""
    found: dict[str, Any] = {}
    for item in metadata:
        if isinstance(item, FieldInfo):
            found |= _constraints(item.metadata)
        else:
            found |= {
                name: getattr(item, name)
                for name in _BOUNDS
                if getattr(item, name, None) is not None
            }
    return found


def accepted(annotation: Any, metadata: Iterable[Any] = ()) -> str:
    """What a field of type ``annotation`` (with pydantic ``metadata``) accepts, in words, for messages
    and tables: "an integer >= 1", "a number in (0, 1)", "one of ('paper', 'robust')"."""
    metadata = list(metadata)
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *extra = get_args(annotation)
        return accepted(base, [*metadata, *extra])
    if origin in (Union, types.UnionType):
        given = [arg for arg in get_args(annotation) if arg is not type(None)]
        return " or ".join(accepted(arg, metadata) for arg in given)
    if origin is Literal:
        return f"one of {get_args(annotation)}"
    bounds = _constraints(metadata)
    if annotation is bool:
        return "a boolean (1/0, true/false, yes/no, on/off)"
    if annotation in (int, float):
        kind = "an integer" if annotation is int else "a number"
        low = (
            ("[", bounds["ge"])
            if "ge" in bounds
            else ("(", bounds["gt"])
            if "gt" in bounds
            else None
        )
        high = (
            (bounds["le"], "]")
            if "le" in bounds
            else (bounds["lt"], ")")
            if "lt" in bounds
            else None
        )
        if low and high:
            return f"{kind} in {low[0]}{low[1]}, {high[0]}{high[1]}"
        if low:
            return f"{kind} {'>=' if low[0] == '[' else '>'} {low[1]}"
        if high:
            return f"{kind} {'<=' if high[1] == ']' else '<'} {high[0]}"
        return kind
    if annotation is str:
        if "pattern" in bounds:
            return _PATTERN_WORDS.get(bounds["pattern"], f"text matching {bounds['pattern']}")
        return "non-empty text" if bounds.get("min_length") else "text"
    if annotation is SecretStr:
        return "text (kept secret)"
    if origin in (tuple, list):
        return "a comma-separated list"
    return getattr(annotation, "__name__", str(annotation))


def _config_error(cls: type, error: ValidationError) -> Exception:
    """The ConfigError (TypeError for an unknown field) of a configuration pydantic refused."""
    problems = []
    for item in error.errors():
        location, kind = item["loc"], item["type"]
        if kind in ("unexpected_keyword_argument", "unexpected_positional_argument"):
            return TypeError(
                f"{cls.__name__}.__init__() got an unexpected argument {location[-1]!r}"
            )
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, ConfigError):  # a check of several fields (__post_init__)
            problems.append(str(cause))
            continue
        name = ".".join(map(str, location))
        info = cls.__pydantic_fields__.get(name)  # type: ignore[attr-defined]
        reason = (
            f"expected {accepted(info.annotation, info.metadata)}"
            if info is not None
            else item["msg"].lower()
        )
        problems.append(f"{name}={item['input']!r} is invalid: {reason}")
    return ConfigError("; ".join(problems))


_Config = TypeVar("_Config")


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, Field))
def _validated(cls: type[_Config]) -> type[_Config]:
    """``cls`` as a frozen pydantic dataclass whose refusals are ConfigErrors (TypeErrors for unknown
    fields). Plain dataclass otherwise: attribute access, ``dataclasses.replace``/``asdict``, the
    defaults as class attributes."""
    cls = pydantic.dataclasses.dataclass(frozen=True, config=ConfigDict(extra="forbid"))(cls)
    validating_init = cls.__init__

    @functools.wraps(validating_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            validating_init(self, *args, **kwargs)
        except ValidationError as error:
            raise _config_error(type(self), error) from None

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


@_validated
class PreprocessConfig:
    """How raw files become model-sized RGB cells.

    Attributes:
        image_size: side of the square model input, pixels.
        max_pixels: largest accepted width*height of a source image; larger files are
            treated as decompression bombs (single cells are well under a megapixel).
        min_side: smallest accepted width or height of a source image, pixels.
        max_aspect_ratio: largest accepted long side / short side of a source image.
    """

    image_size: Annotated[int, Field(ge=8)] = 224
    max_pixels: Positive = 40_000_000
    min_side: Positive = 16
    max_aspect_ratio: Annotated[float, Field(ge=1)] = 8.0


@_validated
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

    rotation_degrees: Annotated[float, Field(ge=0, le=180)] = 20.0
    width_shift: Jitter = 0.2
    height_shift: Jitter = 0.2
    zoom: Jitter = 0.2
    horizontal_flip: bool = True
    vertical_flip: bool = True
    fill_mode: FillMode = "nearest"
    scale: Share = 0.0
    hue: Jitter = 0.0
    saturation: Jitter = 0.0
    brightness: Jitter = 0.0
    contrast: Jitter = 0.0
    stain_transfer: Share = 0.0


@_validated
class ModelConfig:
    """The network: ResNet50 backbone (frozen) + Flatten, Dense(128, relu), Dense(1, sigmoid).

    Attributes:
        image_size: side of the square RGB input, pixels (224 in the paper).
        head_units: units of the hidden Dense layer; 0 leaves it out (a logistic head).
        backbone_weights: "imagenet" (Keras' download cache under KERAS_HOME), "none"
            (random initialisation), or a weights file: a local path, or a URL that tasks.weights
            fetches into the local cache first (aml_model reads local files only).
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

    image_size: ImageSize = 224
    head_units: NonNegative = 128
    backbone_weights: BackboneWeights = "imagenet"
    backbone_weights_sha256: Sha256 | None = None
    learning_rate: PositiveNumber = 1e-4
    stain_normalisation: StainNormalisation = "none"
    scale_normalisation: ScaleNormalisation = "none"
    feature_layer: FeatureLayer = FEATURE_LAYERS[-1]
    feature_pooling: FeaturePooling = "none"


@_validated
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

    epochs: Positive = 50
    batch_size: Positive = 32
    early_stopping_patience: NonNegative = 5
    train_fraction: Probability = 0.8
    val_fraction: Probability = 0.1
    test_fraction: Probability = 0.1
    seed: Seed = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        fractions = (self.train_fraction, self.val_fraction, self.test_fraction)
        if abs(sum(fractions) - 1) >= 1e-9:
            message = f"train/val/test fractions={fractions!r} is invalid: expected three fractions summing to 1"
            raise ConfigError(message)


#: What the "robust" recipe changes (chosen in benchmarks/bench_robustness.py; docs/design.md).
ROBUST_MODEL: dict[str, object] = {
    "stain_normalisation": "channel",
    "scale_normalisation": "nucleus",
    "feature_layer": "conv3_block4_out",
    "feature_pooling": "mean_std",
    "head_units": 0,
    "learning_rate": 3e-3,
}
ROBUST_AUGMENT: dict[str, float] = {
    "scale": 0.5,
    "hue": 0.05,
    "saturation": 0.5,
    "brightness": 0.1,
    "contrast": 0.3,
    "stain_transfer": 0.8,
}


@_validated
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
    threshold: Probability = 0.5
    recipe: Recipe = "paper"

    @classmethod
    def for_recipe(
        cls, recipe: str, model: ModelConfig | None = None, train: TrainConfig | None = None
    ) -> ExperimentConfig:
        """``model`` and ``train`` with the recipe's colour handling and augmentation.

        "paper" leaves the paper's settings as they are. "robust" zooms each cell to a fixed
        nucleus size and standardises its colour channels before the backbone; has the head read
        the channel means and spreads of the backbone's third stage instead of the last stage's
        map, standardised, through a logistic head (no hidden layer; Adam 3e-3, at which it stops
        within the default 50 epochs); and widens augmentation to the ways labs differ: scale (cell
        size per pixel), hue, saturation, brightness and contrast (stain and white balance).
        Other fields (input size, weights, epochs, seed) are kept.

        Raises:
            ConfigError: an unknown recipe.
        """
        model, train = model or ModelConfig(), train or TrainConfig()
        if recipe == "robust":
            model = dataclasses.replace(model, **ROBUST_MODEL)
            train = dataclasses.replace(
                train, augment=dataclasses.replace(train.augment, **ROBUST_AUGMENT)
            )
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


@_validated
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

    threshold: Probability = 0.5
    blast_cutoff: Probability = 0.2
    min_cells: Positive = 100
    confidence: Probability = 0.95
    max_quarantined_share: Share = 0.02


@_validated
class ScoringConfig:
    """How a scoring runs on the workers (what it calls is :class:`SummaryConfig`).

    Attributes:
        batch_size: cells per forward pass on a worker.
        precision: "auto" (each worker picks) or an inference precision (aml_model.inference).
        chunk_cells: cells per Zarr chunk of a run's arrays.
        chunks_per_task: chunks one decoding (and scoring) task takes.
        explain_top_k: most blast-like cells per patient in the reports and Grad-CAM.
    """

    batch_size: Positive = 64
    precision: Precision = "auto"
    chunk_cells: Positive = 64
    chunks_per_task: Positive = 4
    explain_top_k: Positive = 12


#: Self-supervised objectives of :mod:`aml_model.pretrain`.
PretrainMethod = Literal["simclr"]
PRETRAIN_METHODS: tuple[str, ...] = get_args(PretrainMethod)


@_validated
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

    method: PretrainMethod = "simclr"
    steps: Positive = 600
    batch_size: PretrainBatchSize = 64
    view_size: ImageSize = 112
    min_crop: CropFraction = 0.5
    learning_rate: PositiveNumber = 1e-3
    warmup_steps: NonNegative = 100
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    temperature: PositiveNumber = 0.2
    projection_units: Positive = 256
    projection_dim: Positive = 128
    seed: Seed = 0
    checkpoint_every: Positive = 50
    pool_cells: Positive = 8192
    tone: Share = 1.0
    greyscale: Share = 0.2
    blur: BlurSigma = 1.5

    def __post_init__(self) -> None:
        if self.pool_cells < self.batch_size:
            message = f"pool_cells={self.pool_cells!r} is invalid: expected at least batch_size ({self.batch_size})"
            raise ConfigError(message)
        if self.warmup_steps >= self.steps:
            message = (
                f"warmup_steps={self.warmup_steps!r} is invalid: expected 0 <= warmup_steps < steps "
                f"({self.steps})"
            )
            raise ConfigError(message)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (for backbone cards)."""
        return dataclasses.asdict(self)


@_validated
class RetrainConfig:
    """How a retrain trains and promotes, besides the model's :class:`ExperimentConfig`.

    Attributes:
        augment_views: augmented views per training cell in the feature cache (cached path).
        training_path: "cached" (head on cached backbone features) or "plain" (backbone in the loop).
        promotion_margin: tolerated ROC AUC drop of a challenger against the champion.
    """

    augment_views: AugmentViews = 2
    training_path: TrainingPath = "cached"
    promotion_margin: Share = 0.005
