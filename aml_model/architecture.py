"""The paper's network: frozen Keras ResNet50 + Flatten, Dense(128, relu), Dense(1, sigmoid).

A recipe may cut the backbone at an earlier stage, pool its map (:mod:`aml_model.pooling`) and
change the head's size (:class:`aml_model.config.ModelConfig`); the paper's model is the default.
"""

from __future__ import annotations

import logging

import keras
import numpy as np

from aml_model.config import FEATURE_LAYERS, ModelConfig
from aml_model.pooling import POOLING_LAYER_NAME, SpatialMeanStd
from aml_model.scale import SCALE_LAYER_NAME, ScaleNormalisation
from aml_model.stain import STAIN_LAYER_NAME, StainNormalisation
from aml_model.weights import (
    imagenet_weights_file,
    load_backbone_weights,
    local_weights_file,
    partial_weights_layers,
)

__all__ = [
    "BACKBONE_NAME",
    "FEATURE_NORMALISATION_NAME",
    "INPUT_NORMALISATION_LAYERS",
    "OUTPUT_LAYER_NAME",
    "adapt_feature_normalisation",
    "assemble_model",
    "build_backbone",
    "build_head",
    "build_model",
    "compile_model",
    "copy_layer_weights",
    "cut_backbone",
    "feature_extractor",
    "head_layer_names",
    "input_normalisation",
    "resolve_backbone_weights",
    "seed_weights",
    "whole_backbone",
]

logger = logging.getLogger(__name__)

BACKBONE_NAME = "resnet50"
#: Layers between the input and the backbone, in model order, when a recipe has them.
INPUT_NORMALISATION_LAYERS = (SCALE_LAYER_NAME, STAIN_LAYER_NAME)
#: The head's first layer when the backbone's features are pooled.
FEATURE_NORMALISATION_NAME = "feature_normalisation"
#: The head's last layer: the blast probability.
OUTPUT_LAYER_NAME = "blast_probability"


def input_normalisation(config: ModelConfig) -> list[keras.layers.Layer]:
    """The recipe's layers before the backbone: scale, then colour (none for the paper).

    They take and give ResNet50-normalised `(batch, s, s, 3)` float32 images.
    """
    layers: list[keras.layers.Layer] = []
    if config.scale_normalisation != "none":
        layers.append(ScaleNormalisation(name=SCALE_LAYER_NAME))
    if config.stain_normalisation != "none":
        layers.append(StainNormalisation(config.stain_normalisation, name=STAIN_LAYER_NAME))
    return layers


def resolve_backbone_weights(config: ModelConfig, weights_file: str | None = None) -> str | None:
    """Turn ``config.backbone_weights`` into what ``keras.applications.ResNet50`` takes.

    Only local files are read here: a weights file named by a remote URL (``s3://...``) is
    fetched by the caller (:func:`tasks.weights.fetch_backbone_weights`) and passed as
    ``weights_file``; the configuration, and what is recorded of it, keeps the URL.

    Args:
        config: ``backbone_weights`` ("imagenet", "none", or a weights file's path or URL) and
            its expected ``backbone_weights_sha256``.
        weights_file: the local copy of the file ``config.backbone_weights`` names, read in its
            place; its sha256 is checked against ``backbone_weights_sha256``.

    Returns:
        ``None`` for "none", else the path of a local weights file.

    Raises:
        BackboneWeightsError: "imagenet" offline without a cached file, an unreadable file, or a
            remote URL without its local copy.
        WeightsHashMismatchError: the file's sha256 differs from ``backbone_weights_sha256``.
        ValueError: ``weights_file`` is given for "imagenet" or "none", which name no file.
    """
    choice = config.backbone_weights
    if choice.lower() in ("none", "imagenet") and weights_file is not None:
        message = f"a weights file ({weights_file}) was given for backbone_weights={choice!r}, which names no file"
        raise ValueError(message)
    if choice.lower() == "none":
        return None
    if choice.lower() == "imagenet":
        return imagenet_weights_file()
    return local_weights_file(weights_file or choice, config.backbone_weights_sha256)


def build_backbone(config: ModelConfig, weights_file: str | None = None) -> keras.Model:
    """ResNet50 without its top, up to ``config.feature_layer`` and pooled as configured, frozen.

    Args:
        config: input size, backbone weights, feature layer and pooling.
        weights_file: the local copy of a remote ``config.backbone_weights`` (:func:`resolve_backbone_weights`).

    Returns:
        A Keras model named "resnet50", `(batch, s, s, 3)` float32 (ResNet50-normalised) ->
        the feature layer's map, `(batch, s/32, s/32, 2048)` for the paper's ``conv5_block3_out``
        (`s/8, s/8, 512` for ``conv3_block4_out``), or `(batch, 2c)` with "mean_std" pooling.
    """
    return cut_backbone(whole_backbone(config, weights_file), config)


def whole_backbone(config: ModelConfig, weights_file: str | None = None) -> keras.Model:
    """The whole ResNet50 without its top, holding ``config.backbone_weights``, not frozen.

    The weights are those of the whole network (ImageNet's, or a weights file), so one file
    serves every feature layer, or a partial file of its first stages
    (:func:`aml_model.weights.save_partial_weights`: a pretrained cell backbone) that holds at
    least the layers up to ``config.feature_layer``; the layers after it are then drawn from a
    fixed seed, so that the whole network's weights, and its backbone id, are the same each time.

    Args:
        weights_file: the local copy of a remote ``config.backbone_weights`` (:func:`resolve_backbone_weights`).

    Raises:
        BackboneWeightsError: the weights cannot be had, or a partial file stops too early.
    """
    weights = resolve_backbone_weights(config, weights_file)
    backbone = keras.applications.ResNet50(
        include_top=False,
        weights=None,
        input_shape=(config.image_size, config.image_size, 3),
        name=BACKBONE_NAME,
    )
    if weights is not None:
        if partial_weights_layers(weights) is not None:
            seed_weights(backbone, 0)
        load_backbone_weights(backbone, weights, config.feature_layer)
    return backbone


def cut_backbone(backbone: keras.Model, config: ModelConfig) -> keras.Model:
    """The part of a whole ResNet50 ``backbone`` that ``config`` reads, frozen; its weights are shared.

    Returns:
        ``backbone`` itself for the paper (the last stage, not pooled), else a model named
        "resnet50" from its input to ``config.feature_layer``, pooled by ``config.feature_pooling``.
    """
    if config.feature_layer != FEATURE_LAYERS[-1] or config.feature_pooling != "none":
        features = backbone.get_layer(config.feature_layer).output
        if config.feature_pooling == "mean_std":
            features = SpatialMeanStd(name=POOLING_LAYER_NAME)(features)
        backbone = keras.Model(backbone.input, features, name=BACKBONE_NAME)
    backbone.trainable = False
    return backbone


def seed_weights(model: keras.Model, seed: int) -> keras.Model:
    """Re-draw every kernel of ``model`` from ``seed`` alone, as Keras' default Glorot-uniform
    initialiser would, and zero the biases; BatchNorm statistics keep their initial values.

    Keras draws initial weights from Python's global ``random`` module, which any other thread
    of the process (Prefect's and Dask's among them) may advance at any time, so
    ``keras.utils.set_random_seed`` alone does not make an initialisation reproducible in a
    flow. This depends on nothing but ``seed``.

    Returns:
        ``model``, changed in place.
    """
    rng = np.random.default_rng(seed)
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense):
            shape = tuple(layer.kernel.shape)
            receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
            limit = np.sqrt(6.0 / (shape[-2] * receptive + shape[-1] * receptive))
            layer.kernel.assign(rng.uniform(-limit, limit, shape).astype(layer.kernel.dtype))
            if layer.bias is not None:
                layer.bias.assign(np.zeros(layer.bias.shape, layer.bias.dtype))
    return model


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    layers = []
    for layer in model.layers:
        layers.extend(_all_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return layers


def _head_layers(config: ModelConfig) -> list[keras.layers.Layer]:
    layers: list[keras.layers.Layer] = []
    if config.feature_pooling != "none":
        # Pooled channel statistics differ in scale from channel to channel; standardised with the
        # training features' mean and variance (adapt_feature_normalisation), one learning rate
        # suits them all. The statistics are weights of the saved model.
        layers.append(keras.layers.Normalization(name=FEATURE_NORMALISATION_NAME))
    layers.append(keras.layers.Flatten(name="flatten"))
    if config.head_units:
        layers.append(keras.layers.Dense(config.head_units, activation="relu", name="dense"))
    # float32 output keeps the probability exact under mixed-precision policies.
    layers.append(
        keras.layers.Dense(1, activation="sigmoid", name=OUTPUT_LAYER_NAME, dtype="float32")
    )
    return layers


def head_layer_names(model: keras.Model) -> list[str]:
    """Names of the layers after the backbone of a model from :func:`build_model`, in order."""
    names = [layer.name for layer in model.layers]
    return names[names.index(BACKBONE_NAME) + 1 :]


def copy_layer_weights(source: keras.layers.Layer, target: keras.layers.Layer) -> None:
    """Give ``target`` the weights of ``source`` (same class and configuration).

    A Keras ``Normalization`` layer computes from copies of its statistics made when it is
    adapted or loaded, so it is told that they changed.
    """
    target.set_weights(source.get_weights())
    if isinstance(target, keras.layers.Normalization):
        target.finalize_state()


def adapt_feature_normalisation(model: keras.Model, features) -> bool:
    """Fit the feature normalisation of a pooled head (or full model) to training features.

    Args:
        model: a head from :func:`build_head` or a model from :func:`build_model`.
        features: the training features, `(n, 2c)` array or a tf.data dataset of `(batch, 2c)`
            batches (the backbone's outputs, augmented views included).

    Returns:
        Whether ``model`` has a feature normalisation (pooled recipes) and it was fitted.
    """
    if FEATURE_NORMALISATION_NAME not in [layer.name for layer in model.layers]:
        return False
    model.get_layer(FEATURE_NORMALISATION_NAME).adapt(features)
    return True


def feature_extractor(model: keras.Model, backbone: keras.Model | None = None) -> keras.Model:
    """What feeds the head of a model from :func:`build_model`: its input normalisation and backbone.

    Args:
        model: the full model.
        backbone: a model on the backbone's input to use in its place (sharing its layers, e.g.
            one that also outputs an inner feature map); by default the backbone itself.

    Returns:
        A model sharing ``model``'s layers, `(batch, s, s, 3)` ResNet50-normalised float32 ->
        the backbone's output(s).
    """
    inputs = keras.Input(tuple(model.input_shape[1:]), name="image")
    images = inputs
    for layer in model.layers:
        if layer.name in INPUT_NORMALISATION_LAYERS:
            images = layer(images)
    backbone = backbone or model.get_layer(BACKBONE_NAME)
    # training=False keeps the frozen BatchNorm layers on their stored statistics, as in build_model.
    return keras.Model(inputs, backbone(images, training=False), name="feature_extractor")


def build_head(feature_shape: tuple[int, int, int], config: ModelConfig) -> keras.Sequential:
    """The classifier head alone, for training on cached backbone features.

    Its layers have the same names as the head of :func:`build_model`, so trained head
    weights transfer by layer name.

    Args:
        feature_shape: the backbone's output shape without the batch axis, e.g. (7, 7, 2048),
            or (1024,) pooled (the Flatten layer then passes it through).
        config: head size.

    Returns:
        A compiled Keras model `(batch, *feature_shape)` -> `(batch, 1)` probabilities.
    """
    head = keras.Sequential(
        [keras.Input(feature_shape, name="features"), *_head_layers(config)], name="head"
    )
    # XLA fuses Adam's update of the 12.8M-weight dense layer into one kernel: a head epoch on
    # cached features runs 3.5x faster on CPU, where the separate update ops dominated.
    return compile_model(head, config, jit_compile=True)


def compile_model(
    model: keras.Model, config: ModelConfig, jit_compile: bool = False
) -> keras.Model:
    """Compile with the paper's Adam(learning_rate) and binary cross-entropy; returns ``model``.

    ``jit_compile`` compiles each training step with XLA.
    """
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")],
        jit_compile=jit_compile,
    )
    return model


def build_model(config: ModelConfig, weights_file: str | None = None) -> keras.Model:
    """Build and compile the paper's model, or a recipe's variant of it.

    Layer sequence: input -> [scale_normalisation, stain_normalisation: robust recipe] -> resnet50 (frozen,
    inference mode) -> flatten -> dense (relu) -> blast_probability (sigmoid). With the paper's
    224x224 input there are 12,845,313 trainable parameters, all in the head. The robust recipe's
    resnet50 ends at ``conv3_block4_out`` and pools it to 1,024 channel statistics, and its head
    is feature_normalisation -> flatten -> blast_probability: 1,025 trainable parameters.

    Args:
        config: see :class:`~aml_model.config.ModelConfig`.
        weights_file: the local copy of a remote ``config.backbone_weights`` (:func:`resolve_backbone_weights`).

    Returns:
        A compiled Keras model `(batch, s, s, 3)` ResNet50-normalised float32 ->
        `(batch, 1)` blast probability.
    """
    backbone = build_backbone(config, weights_file)
    inputs = keras.Input((config.image_size, config.image_size, 3), name="image")
    images = inputs
    for layer in input_normalisation(config):
        images = layer(images)
    # training=False keeps the frozen BatchNorm layers on their stored statistics.
    features = backbone(images, training=False)
    outputs = features
    for layer in _head_layers(config):
        outputs = layer(outputs)
    model = keras.Model(inputs, outputs, name="hassan_resnet50_aml")
    return compile_model(model, config)


def assemble_model(
    config: ModelConfig, head: keras.Model, weights_file: str | None = None
) -> keras.Model:
    """The full paper model from a head trained on cached features.

    Builds :func:`build_model` (its backbone from ``config.backbone_weights``, which must be the
    weights the features were computed with; ``weights_file``, the local copy of a remote one) and
    copies the head's weights in by layer name.

    Returns:
        A compiled model identical in architecture to ``build_model(config)``.
    """
    model = build_model(config, weights_file)
    for layer in head.layers:
        copy_layer_weights(layer, model.get_layer(layer.name))
    return model
