"""The types of the flows' parameters, their options, and the checks every flow makes before it writes anything.

Prefect validates a flow's arguments against its signature (pydantic) before the flow's first line
runs: a value outside a ``Literal`` or a ``Field`` bound fails the flow run at once, with a state
message naming the parameter and what it accepts (``ParameterTypeError``), and nothing is written.
The deployments publish the same types as their parameter schema, so the Prefect server refuses
such a value already when a run is created. What a type cannot say (that a source exists) is
checked by :func:`require_existing` at the start of each flow, also before anything is written.

:class:`ScoreOptions` and :class:`RetrainOptions` are the typed options of ``score-smears`` and
``retrain-and-evaluate``: one flow parameter (``options``) each, whose defaults and bounds come from
:mod:`aml_model.config` (its types ``Positive``, ``Probability``, ``ImageSize``... hold each bound
once; tests/flows/test_parameters.py checks that every option has its configuration field's type).
The CLI's options and the deployments' parameters are checked against them
(tests/app/test_cli_defaults.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from aml_model.config import (
    DEFAULT_RECIPE,
    AugmentViews,
    BackboneWeights,
    BlurSigma,
    CropFraction,
    ExperimentConfig,
    ImageSize,
    ModelConfig,
    NonNegative,
    Positive,
    PositiveNumber,
    Precision,
    PretrainBatchSize,
    PretrainConfig,
    PretrainMethod,
    Probability,
    Recipe,
    RetrainConfig,
    ScoringConfig,
    Seed,
    Sha256,
    Share,
    SummaryConfig,
    TrainConfig,
    TrainingPath,
)
from tasks.runs import ID_PATTERN
from tasks.store import Store, is_local

__all__ = [
    "BackboneWeights",
    "ImageSize",
    "Layout",
    "PartialRetrainOptions",
    "Positive",
    "PretrainOptions",
    "Precision",
    "Probability",
    "Recipe",
    "RetrainOptions",
    "RunId",
    "ScoreOptions",
    "Sha256",
    "Share",
    "nest_options",
    "SiteName",
    "SiteOperatingPoint",
    "TrainingPath",
    "require_existing",
    "require_store",
]

#: Source layouts (tasks.discover.LAYOUTS).
Layout = Literal["auto", "patient", "class", "manifest"]
#: A site's operating points (aml_model.calibration.OPERATING_POINTS; a test keeps them equal).
SiteOperatingPoint = Literal["fraction", "balanced"]
#: aml_model.calibration.DEFAULT_OPERATING_POINT (a test keeps them equal): importing that module
#: (scikit-learn, SciPy) takes 2 s, which the CLI's check of its inputs cannot wait for.
_DEFAULT_OPERATING_POINT: SiteOperatingPoint = "fraction"

# Positive, Probability, Share, ImageSize, Sha256, BackboneWeights (and Precision, TrainingPath, Recipe)
# are aml_model.config's, re-exported for the flows' own parameters.
#: A run id becomes a folder name under runs/: no '/', no leading '.'.
RunId = Annotated[str, Field(pattern=ID_PATTERN)]
#: A site name becomes a file name (aml_model.calibration.validate_site_name).
SiteName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


def require_existing(locations: Iterable[Store], what: str) -> list[Store]:
    """Raise ``FileNotFoundError`` naming the parameter when any of ``locations`` does not exist.

    Args:
        locations: local paths or fsspec URLs (``s3://...``) with the options that reach them.
        what: the parameter's name, for the message ("source", "backbone_weights"...).

    Returns:
        ``locations``, as a list.
    """
    locations = list(locations)
    for location in locations:
        if not location.exists(location.url):
            message = f"{what} {location.url} does not exist"
            raise FileNotFoundError(message)
    return locations


def require_store(store: Store) -> None:
    """Raise when ``store`` cannot hold a run store: a store's folders are made when first written,
    an S3 bucket is not.

    Raises:
        FileNotFoundError: the bucket of an s3:// store does not exist.
        ValueError: a local store is a file.
    """
    fs, path = store.resolve()
    if is_local(fs):
        if fs.isfile(path):
            message = f"store {store.url} is a file, not a folder"
            raise ValueError(message)
    elif store.url.startswith(("s3://", "s3a://")) and not fs.exists(
        bucket := path.split("/", 1)[0]
    ):
        message = f"store {store.url}: bucket {bucket} does not exist"
        raise FileNotFoundError(message)


class ScoreOptions(BaseModel):
    """How ``score-smears`` scores and calls: everything but what to score, where, and the S3 endpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        "champion", description='"champion", a registered version, or a .keras path/URL.'
    )
    run_id: RunId | None = Field(
        None,
        description="The ingest run to score; by default the source name and a "
        "hash of its inputs, so the same inputs map to the same run whatever the model.",
    )
    score_id: RunId | None = Field(
        None,
        description="The scoring to write; by default the model version and a "
        "hash of the settings, so the same model and settings map to the same scoring.",
    )
    layout: Layout = Field("auto", description="Source layout (as for ingest).")
    batch_size: Positive = Field(
        ScoringConfig.batch_size, description="Cells per forward pass on a worker."
    )
    threshold: Probability = Field(
        SummaryConfig.threshold,
        description="Probability at which a cell is "
        "blast-like; must stay at its default with a site.",
    )
    blast_cutoff: Probability = Field(
        SummaryConfig.blast_cutoff, description="Blast-like fraction that suspects AML."
    )
    min_cells: Positive = Field(
        SummaryConfig.min_cells, description="Fewer scored cells give INSUFFICIENT_CELLS."
    )
    max_quarantined_share: Share = Field(
        SummaryConfig.max_quarantined_share,
        description="A patient with more of "
        "its inputs quarantined than this share gets the high_quarantine_rate QC "
        "flag.",
    )
    precision: Precision = Field(
        ScoringConfig.precision,
        description='"auto" (each worker picks: '
        'tasks.predict.worker_precision), "float32", "bfloat16" or "float16".',
    )
    chunk_cells: Positive = Field(
        ScoringConfig.chunk_cells, description="Cells per Zarr chunk of a new run."
    )
    chunks_per_task: Positive = Field(
        ScoringConfig.chunks_per_task, description="Chunks per decoding and scoring task."
    )
    explain: bool = Field(
        True,
        description="Grad-CAM of the most blast-like cells of each AML_SUSPECTED or "
        "INDETERMINATE patient, in the reports.",
    )
    explain_top_k: Positive = Field(
        ScoringConfig.explain_top_k,
        description="Cells per patient in the reports' galleries (and Grad-CAM).",
    )
    site: SiteName | None = Field(
        None,
        description="Score with this site's calibration of the model "
        "(aml-smear calibrate); refused when the site has none for this model version.",
    )
    site_operating_point: SiteOperatingPoint = Field(
        _DEFAULT_OPERATING_POINT,
        description='With a site: its threshold that makes the calls, "fraction" '
        "(the blast-like fraction unbiased at the blast cut-off) or "
        '"balanced" (sensitivity and specificity balanced).',
    )

    def summary_config(self, site_threshold: float | None = None) -> SummaryConfig:
        """The call rule; a site's calibrated threshold replaces ``threshold``."""
        threshold = self.threshold if site_threshold is None else site_threshold
        return SummaryConfig(
            threshold=threshold,
            blast_cutoff=self.blast_cutoff,
            min_cells=self.min_cells,
            max_quarantined_share=self.max_quarantined_share,
        )


class RetrainOptions(BaseModel):
    """How ``retrain-and-evaluate`` trains, evaluates and promotes: everything but the sources and the store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: Positive = Field(TrainConfig.epochs, description="Most training epochs.")
    patience: NonNegative = Field(
        TrainConfig.early_stopping_patience,
        description="Early-stopping patience on validation loss, epochs.",
    )
    seed: Seed = Field(
        TrainConfig.seed,
        description="Seed of the split, initialisation, shuffling and augmentation.",
    )
    backbone_weights: BackboneWeights = Field(
        ModelConfig.backbone_weights, description='"imagenet", "none", or a weights file path/URL.'
    )
    backbone_weights_sha256: Sha256 | None = Field(
        None, description="Checked against the weights file."
    )
    image_size: ImageSize = Field(
        ModelConfig.image_size, description="Model input side, pixels (224 in the paper)."
    )
    augment_views: AugmentViews = Field(
        RetrainConfig.augment_views, description="Augmented views per training cell (cached path)."
    )
    promotion_margin: Share = Field(
        RetrainConfig.promotion_margin, description="Tolerated ROC AUC drop against the champion."
    )
    training_path: TrainingPath = Field(
        RetrainConfig.training_path,
        description='"cached" (head on cached '
        'backbone features) or "plain" (backbone in the loop).',
    )
    layout: Layout = Field("auto", description="Source layout (as for ingest).")
    recipe: Recipe = Field(
        DEFAULT_RECIPE,
        description='"paper" (Hassan et al. unchanged) or "robust" '
        '(docs/design.md, "The model and its recipes").',
    )

    def experiment_config(self) -> ExperimentConfig:
        """The model's configuration: the recipe's, at these input size, weights and training settings."""
        return ExperimentConfig.for_recipe(
            self.recipe,
            ModelConfig(
                image_size=self.image_size,
                backbone_weights=self.backbone_weights,
                backbone_weights_sha256=self.backbone_weights_sha256,
            ),
            TrainConfig(epochs=self.epochs, early_stopping_patience=self.patience, seed=self.seed),
        )

    def settings(self) -> dict:
        """What a model card records besides the configuration (and what "unchanged" compares)."""
        return {
            "recipe": self.recipe,
            "training_path": self.training_path,
            "augment_views": self.augment_views,
        }


class PretrainOptions(BaseModel):
    """How ``pretrain-backbone`` trains a backbone: everything but the cells and the store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    recipe: Recipe = Field(
        DEFAULT_RECIPE,
        description="The recipe the backbone is for: its input normalisation, "
        "feature layer, pooling and augmentation (the views).",
    )
    start_from: BackboneWeights = Field(
        "none",
        description='The weights to continue from: "none" (random), '
        '"shipped", a registered backbone id, "imagenet", or a weights file path/URL.',
    )
    start_from_sha256: Sha256 | None = Field(
        None, description="Checked against a start_from weights file."
    )
    name: RunId = Field(
        "cells", description="Prefix of the registered backbone's id (<name>-<sha256 prefix>)."
    )
    method: PretrainMethod = Field(
        PretrainConfig.method, description='"simclr" (aml_model.pretrain).'
    )
    steps: Positive = Field(PretrainConfig.steps, description="Optimiser steps in all.")
    steps_per_task: Positive = Field(
        200,
        description="Steps one task trains before the flow checks in; each task "
        "resumes from the checkpoint.",
    )
    batch_size: PretrainBatchSize = Field(PretrainConfig.batch_size, description="Cells per step.")
    view_size: ImageSize = Field(
        PretrainConfig.view_size, description="Side of the training views, pixels."
    )
    min_crop: CropFraction = Field(
        PretrainConfig.min_crop, description="Smallest view crop, as a fraction of the cell's side."
    )
    learning_rate: PositiveNumber = Field(
        PretrainConfig.learning_rate,
        description="Peak learning rate (AdamW, warm-up then cosine decay).",
    )
    temperature: PositiveNumber = Field(
        PretrainConfig.temperature, description="Contrastive softmax temperature."
    )
    seed: Seed = Field(
        PretrainConfig.seed, description="Seed of the initial weights, batches, views and crops."
    )
    tone: Share = Field(
        PretrainConfig.tone,
        description="The views' random tone curve per colour channel: its largest weight.",
    )
    greyscale: Share = Field(PretrainConfig.greyscale, description="Share of views turned grey.")
    blur: BlurSigma = Field(
        PretrainConfig.blur,
        description="The views' largest Gaussian blur, sigma in pixels of the view.",
    )
    checkpoint_every: Positive = Field(
        PretrainConfig.checkpoint_every, description="Steps between checkpoints."
    )
    pool_cells: Positive = Field(
        PretrainConfig.pool_cells, description="Most cells a task holds in memory."
    )
    image_size: ImageSize = Field(
        ModelConfig.image_size, description="The model's input side, pixels."
    )
    layout: Layout = Field("auto", description="Source layout (as for ingest).")

    def pretrain_config(self) -> PretrainConfig:
        """The settings of :mod:`aml_model.pretrain` (warm-up: a tenth of the steps, at most its default)."""
        return PretrainConfig(
            method=self.method,
            steps=self.steps,
            batch_size=self.batch_size,
            view_size=self.view_size,
            min_crop=self.min_crop,
            learning_rate=self.learning_rate,
            warmup_steps=min(PretrainConfig.warmup_steps, self.steps // 10),
            temperature=self.temperature,
            seed=self.seed,
            checkpoint_every=self.checkpoint_every,
            pool_cells=max(self.pool_cells, self.batch_size),
            tone=self.tone,
            greyscale=self.greyscale,
            blur=self.blur,
        )

    def experiment_config(self) -> ExperimentConfig:
        """The recipe's model and augmentation at this input size."""
        return ExperimentConfig.for_recipe(
            self.recipe, ModelConfig(image_size=self.image_size, backbone_weights="none")
        )


def _all_optional(model: type[BaseModel]) -> type[BaseModel]:
    """``model`` with every field optional and None by default (options given in part), its
    types, choices and bounds kept for the values that are given."""
    fields = {
        name: (
            (Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation)
            | None,
            Field(None, description=info.description),
        )
        for name, info in model.model_fields.items()
    }
    return create_model(
        f"Partial{model.__name__}", __config__=ConfigDict(extra="forbid", frozen=True), **fields
    )


#: Some of the retrain's options (the nightly's: the rest come from Prefect variables or defaults).
PartialRetrainOptions = _all_optional(RetrainOptions)


def nest_options(parameters: Mapping[str, Any], options: type[BaseModel]) -> dict[str, Any]:
    """A flow's arguments from its parameters by name (as the CLI and the nightly hold them): the
    fields of ``options`` gathered into the flow's ``options`` argument (over any ``options`` given
    as such), the rest as they are."""
    given = dict(parameters.get("options") or {})
    return {
        **{
            name: value
            for name, value in parameters.items()
            if name not in {*options.model_fields, "options"}
        },
        "options": given
        | {name: value for name, value in parameters.items() if name in options.model_fields},
    }
