"""Does the model read the cell or the lab? Recipes compared on held-out cells of two labs.

Trains each recipe on the real LMU cells (myeloblasts, neutrophils; Munich) plus the real PBC
cells (six healthy types; Barcelona, CellaVision), all at once, balanced by source and label,
with the offline backbone (random and seeded, or ``--backbone-weights`` files), and reports on
held-out cells:

- the headline, a proxy for the next lab: held-out LMU blasts moved into PBC's look as completely
  as it can be measured (colour, framing, scale, optics), ranked against all held-out PBC cells
  (six healthy types): a cross-lab ROC AUC. The same AUC for every moved variant, for the blasts
  unmoved, and the other way round (native LMU blasts against PBC cells moved into LMU's look);
- LMU blasts vs. neutrophils: ROC AUC and accuracy;
- PBC, per cell type: the blast-like rate (every PBC cell is normal);
- the blast-like rate at 0.5 of each moved set. A model that learned "CellaVision look = normal"
  calls the moved blasts normal.
- every seed's validation ROC AUC (a collapsed model would show 0.5);
- the misclassified held-out LMU cells by file, and a 95% bootstrap interval of the LMU ROC AUC.

Colour moves: Reinhard et al. (2001): each image's L*a*b* channel means and spreads are set to
the average of the other lab's training images. A second, non-linear move (per-channel histogram
matching to the other lab's pooled training pixels) is reported beside it, so that a recipe whose
colour standardisation happens to invert one transfer cannot pass by construction.
Scale move: the ratio of the two labs' median neutrophil nucleus diameters at the model's input
size (the same cell type has the same physical size), measured on training cells. Resizing both
labs' frames to one input size and matching the nucleus size also matches the field of view.
Framing move: the LMU crops sit the cell farther from the frame centre than CellaVision does; each
cell is shifted so that the labs' median nucleus offsets from the centre agree. The full moves
recolour last, once a cell is framed and sized as the other lab's are: histogram matching assumes
the two images hold the same mix of content.
Optics move: sharpness and noise of the grey cells at the input size, measured on training
neutrophils of both labs after the colour, framing and scale moves; a Gaussian blur and added
noise are solved for to reach the other lab's values. A blur cannot sharpen and added noise cannot
denoise: where the moved cells are already blurrier or noisier, that part of the move is zero and
the gap is recorded.

The model is the paper's network (224 px input, frozen ResNet50, Flatten, Dense(128), sigmoid)
trained on cached backbone features, which is what ``retrain-and-evaluate`` does by default.

``python -m benchmarks.bench_robustness [--image-size 224] [--seeds 0 1 2 3 4] ...``; results go to
``benchmarks/results/robustness.json`` and, summarised, into ``latest.json``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
from PIL import Image

from benchmarks.common import PROJECT_ROOT, RESULTS, print_table, record

SHARED = PROJECT_ROOT.parent / "shared" / "data"
LMU = Path(os.environ.get("AML_SMEAR_LMU_CELLS", SHARED / "lmu-cells"))
PBC = Path(os.environ.get("AML_SMEAR_PBC_CELLS", SHARED / "pbc-cells"))
OUTPUT = RESULTS.parent / "robustness.json"
NEUTROPHIL = "segmented neutrophil"
#: The headline moved set: LMU blasts in PBC's look by every move this benchmark measures.
HEADLINE = "lmu_blasts_as_pbc_full_histogram"
#: Training neutrophils per lab that each look is measured on: the one cell type both labs have.
NEUTROPHILS = 100


@dataclass
class Cells:
    """Decoded cells with their metadata; ``originals`` are the full-size RGB arrays."""

    frame: pd.DataFrame
    images: np.ndarray
    originals: list[np.ndarray]


def load_source(root: Path, source: str, image_size: int, limit: int | None) -> Cells:
    from aml_model.layouts import LMU_CLASSES
    from aml_model.preprocess import PreprocessConfig, decode_cell

    with open(root / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if limit:
        by_class: dict[str, list[dict]] = {}
        for row in rows:
            by_class.setdefault(row["matek_class"], []).append(row)
        rows = [row for group in by_class.values() for row in group[:limit]]
    config = PreprocessConfig(image_size=image_size)
    originals = [np.asarray(Image.open(root / row["file"]).convert("RGB")) for row in rows]
    images = np.stack(
        [decode_cell((root / row["file"]).read_bytes(), row["file"], config) for row in rows]
    )
    frame = pd.DataFrame(
        {
            "source": source,
            "cell_type": [LMU_CLASSES[r["matek_class"]] for r in rows],
            "label": [r["label"] for r in rows],
            "file": [r["file"] for r in rows],
        }
    )
    return Cells(frame, images, originals)


def nucleus_masks(images: np.ndarray) -> np.ndarray:
    """The darkest-stained region of each cell: green below half the image's bright background
    level. Crude, but the same rule on the same cell type in both labs."""
    green = images[..., 1].astype(np.float32)
    background = np.percentile(green.reshape(len(images), -1), 95, axis=1)[:, None, None]
    return green < 0.5 * background


def nucleus_diameter(images: np.ndarray) -> float:
    """Median equivalent diameter (pixels) of the cells' nucleus masks."""
    areas = nucleus_masks(images).sum(axis=(1, 2))
    return float(2 * np.sqrt(np.median(areas) / np.pi))


def nucleus_offsets(images: np.ndarray) -> np.ndarray:
    """Each cell's nucleus centroid minus the frame centre, `(n, 2)` pixels (row, column)."""
    from scipy import ndimage

    centre = (np.array(images.shape[1:3]) - 1) / 2
    # An empty mask has no centroid (NaN): such a cell is left where it is.
    with np.errstate(invalid="ignore"):
        centroids = np.array([ndimage.center_of_mass(mask) for mask in nucleus_masks(images)])
    return np.nan_to_num(centroids - centre)


def nucleus_offset(images: np.ndarray) -> float:
    """Median distance of the nucleus centroid from the frame centre, as a fraction of the frame side."""
    return float(np.median(np.hypot(*nucleus_offsets(images).T)) / images.shape[1])


def recentre(image: np.ndarray, factor: float) -> np.ndarray:
    """Shift the cell so that its nucleus lies ``factor`` times as far from the frame centre,
    mirroring the image into the uncovered border."""
    from scipy import ndimage

    row, column = (factor - 1) * nucleus_offsets(image[None])[0]
    return ndimage.shift(image, (row, column, 0), order=0, mode="mirror")


def blur_level(images: np.ndarray) -> float:
    """Median blur of uint8 cells: scikit-image's ``blur_effect`` (Crete et al. 2007; 0 sharp,
    1 blurred) of the grey image. It compares an image's local variation with that of a re-blurred
    copy, so stain contrast cancels out; content does not (a blast's fine chromatin reads blurrier
    than a neutrophil's granules), so both labs are measured on one cell type."""
    from skimage.color import rgb2gray
    from skimage.measure import blur_effect

    return float(np.median([blur_effect(grey) for grey in rgb2gray(images)]))


def noise_level(images: np.ndarray) -> float:
    """Median noise (grey levels, 0-255) of uint8 cells: Immerkaer's (1996) estimate, the mean
    absolute response to a kernel that cancels locally linear intensity, over each image's flattest
    quarter (least gradient after smoothing), where the response is noise and not stained detail."""
    from scipy import ndimage
    from skimage.color import rgb2gray
    from skimage.filters import gaussian, sobel

    # skimage.restoration.estimate_sigma does this with wavelets but needs PyWavelets, not installed here.
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    levels = []
    for grey in rgb2gray(images) * 255:
        residual = np.abs(ndimage.convolve(grey, kernel, mode="reflect"))
        gradient = sobel(gaussian(grey, 1))
        levels.append(
            np.sqrt(np.pi / 2) / 6 * residual[gradient <= np.percentile(gradient, 25)].mean()
        )
    return float(np.median(levels))


def optics_of(images: np.ndarray) -> dict[str, float]:
    """What the optics move matches: blur and noise of uint8 cells at the model input size."""
    return {"blur_effect": blur_level(images), "noise": noise_level(images)}


def framing_of(images: np.ndarray) -> dict[str, float]:
    """What the scale and centring moves match: the nucleus's diameter (pixels) and distance from the
    frame centre (a fraction of the side), of uint8 cells at the input size in their lab's own colours
    (the nucleus rule reads the stain, and a recoloured cell's darkest region is not its nucleus alone)."""
    return {"nucleus_diameter": nucleus_diameter(images), "nucleus_offset": nucleus_offset(images)}


def optics(images: np.ndarray, sigma: float, noise: float, field: np.ndarray) -> np.ndarray:
    """uint8 cells blurred by a Gaussian of ``sigma`` pixels, plus ``noise`` grey levels times the
    standard-normal ``field`` (one value per pixel and channel, as a camera's noise)."""
    from scipy import ndimage

    blurred = ndimage.gaussian_filter(images.astype(np.float32), (0, sigma, sigma, 0))
    return np.clip(np.rint(blurred + noise * field), 0, 255).astype(np.uint8)


def reach(measure, target: float, upper: float) -> float:
    """The least ``x`` in [0, ``upper``] at which the rising ``measure(x)`` reaches ``target``:
    0 where it is there already (a blur cannot sharpen, nor added noise denoise), ``upper`` where
    even that falls short."""
    from scipy.optimize import brentq

    if measure(0.0) >= target:
        return 0.0
    if measure(upper) <= target:
        return upper
    return float(brentq(lambda x: measure(x) - target, 0.0, upper, xtol=0.01))


def lab_statistics(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Average per-image L*a*b* channel means and standard deviations."""
    from skimage.color import rgb2lab

    labs = [rgb2lab(image).reshape(-1, 3) for image in images]
    return np.mean([lab.mean(0) for lab in labs], 0), np.mean([lab.std(0) for lab in labs], 0)


def reinhard(image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    from skimage.color import lab2rgb, rgb2lab

    lab = rgb2lab(image)
    flat = lab.reshape(-1, 3)
    moved = (lab - flat.mean(0)) / (flat.std(0) + 1e-6) * std + mean
    return np.clip(lab2rgb(moved) * 255, 0, 255).astype(np.uint8)


def match_histograms(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    from skimage.exposure import match_histograms as match

    return np.clip(match(image, reference, channel_axis=-1), 0, 255).astype(np.uint8)


def rescale(image: np.ndarray, factor: float, image_size: int) -> np.ndarray:
    """Show the cell at ``factor`` times its apparent size: crop the centre (factor > 1) or
    pad by reflection (factor < 1), then resize to the model input."""
    height, width = image.shape[:2]
    if factor >= 1:
        h, w = round(height / factor), round(width / factor)
        top, left = (height - h) // 2, (width - w) // 2
        image = image[top : top + h, left : left + w]
    else:
        pad_h, pad_w = round(height * (1 / factor - 1) / 2), round(width * (1 / factor - 1) / 2)
        image = np.pad(image, ((pad_h, pad_h), (pad_w, pad_w), (0, 0)), mode="reflect")
    return np.asarray(
        Image.fromarray(image).resize((image_size, image_size), Image.Resampling.BILINEAR)
    )


def moved_sets(
    lmu: Cells,
    pbc: Cells,
    lmu_train: np.ndarray,
    pbc_train: np.ndarray,
    lmu_test: np.ndarray,
    pbc_test: np.ndarray,
    image_size: int,
    scale: float,
    rng: np.random.Generator,
    site: bool = False,
) -> tuple[dict[str, np.ndarray], dict, np.ndarray | None]:
    """Held-out LMU blasts in PBC's look and held-out PBC cells in LMU's look, and what moved them.

    Returns the moved sets (uint8 cells at the input size); the looks: each lab's, measured on
    its training neutrophils; each direction's framing move (scale, centring) with the framing it
    gives them; and each full move's optics (blur, noise) with the optics of the training
    neutrophils it moved, before its optics move and after; and, with ``site``, a site's own
    unlabelled cells in PBC's look: every training LMU cell moved by the headline move, and the
    training PBC cells (None without ``site``).
    """
    blasts = [i for i in lmu_test if lmu.frame["label"].iloc[i] == "blast"]

    def sample(indices, n):
        return rng.choice(indices, min(n, len(indices)), replace=False)

    lmu_stats = lab_statistics([lmu.originals[i] for i in sample(lmu_train, 100)])
    pbc_stats = lab_statistics([pbc.originals[i] for i in sample(pbc_train, 100)])
    # Pools of equal-sized images: the PBC set has a few 366x369 and 360x360 files.
    lmu_pool = np.concatenate([lmu.originals[i][:360, :360] for i in sample(lmu_train, 20)], axis=1)
    pbc_pool = np.concatenate([pbc.originals[i][:360, :360] for i in sample(pbc_train, 20)], axis=1)
    to_pbc = {
        "reinhard": lambda image: reinhard(image, *pbc_stats),
        "histogram": lambda image: match_histograms(image, pbc_pool),
    }
    to_lmu = {
        "reinhard": lambda image: reinhard(image, *lmu_stats),
        "histogram": lambda image: match_histograms(image, lmu_pool),
    }
    lmu_ngs = sample(
        [i for i in lmu_train if lmu.frame["cell_type"].iloc[i] == NEUTROPHIL], NEUTROPHILS
    )
    pbc_ngs = sample(
        [i for i in pbc_train if pbc.frame["cell_type"].iloc[i] == NEUTROPHIL], NEUTROPHILS
    )
    looks = {
        lab: {**optics_of(cells.images[indices]), **framing_of(cells.images[indices])}
        for lab, cells, indices in (("lmu", lmu, lmu_ngs), ("pbc", pbc, pbc_ngs))
    }

    def move(cells, indices, colour=None, centring=None, factor=1.0, colour_first=True):
        """The cells' originals recentred, recoloured and rescaled at the input size; with
        ``colour_first`` false, recoloured last."""
        moved = []
        for i in indices:
            image = (
                cells.originals[i] if centring is None else recentre(cells.originals[i], centring)
            )
            if colour is not None and colour_first:
                image = colour(image)
            image = rescale(image, factor, image_size)
            moved.append(image if colour is None or colour_first else colour(image))
        return np.stack(moved)

    def fit_framing(cells, neutrophils, factor, target):
        """The centring that brings the median nucleus offset of the ``neutrophils`` rescaled by
        ``factor`` to ``target``'s, and the framing of the neutrophils so moved."""
        centring = target["nucleus_offset"] / nucleus_offset(
            move(cells, neutrophils, factor=factor)
        )
        return {
            "scale": factor,
            "centring": centring,
            "after": framing_of(move(cells, neutrophils, centring=centring, factor=factor)),
        }

    def full(cells, indices, neutrophils, colour, framing, target):
        """``indices`` moved by every move, the optics fitted on the training ``neutrophils`` to ``target``."""
        # Colour last: a histogram is matched on a cell framed as the other lab frames its cells, so
        # that the two hold the same mix of nucleus, cytoplasm and background. Matched before the
        # shrink, a large LMU blast's many nucleus pixels take the colours of PBC's cytoplasm and red
        # cells: fine chromatin turns into coarse clumps no lab produces.
        before = move(
            cells, neutrophils, colour, framing["centring"], framing["scale"], colour_first=False
        )
        # One noise field throughout the search, so that the measure rises smoothly with the level.
        field = rng.standard_normal(before.shape, np.float32)
        sigma = reach(
            lambda s: blur_level(optics(before, s, 0.0, field)), target["blur_effect"], 4.0
        )
        noise = reach(lambda n: noise_level(optics(before, sigma, n, field)), target["noise"], 16.0)
        parameters = {
            "blur_sigma": sigma,
            "noise": noise,
            "before": optics_of(before),
            "after": optics_of(optics(before, sigma, noise, field)),
        }
        return moved_fully(cells, indices, colour, framing, parameters), parameters

    def moved_fully(cells, indices, colour, framing, parameters):
        images = move(
            cells, indices, colour, framing["centring"], framing["scale"], colour_first=False
        )
        return optics(
            images,
            parameters["blur_sigma"],
            parameters["noise"],
            rng.standard_normal(images.shape, np.float32),
        )

    framing = {
        "lmu_as_pbc": fit_framing(lmu, lmu_ngs, 1 / scale, looks["pbc"]),
        "pbc_as_lmu": fit_framing(pbc, pbc_ngs, scale, looks["lmu"]),
    }
    full_moves, moves = {}, {}
    for colour in ("histogram", "reinhard"):
        as_pbc, as_lmu = f"lmu_blasts_as_pbc_full_{colour}", f"pbc_as_lmu_full_{colour}"
        full_moves[as_pbc], moves[as_pbc] = full(
            lmu, blasts, lmu_ngs, to_pbc[colour], framing["lmu_as_pbc"], looks["pbc"]
        )
        full_moves[as_lmu], moves[as_lmu] = full(
            pbc, pbc_test, pbc_ngs, to_lmu[colour], framing["pbc_as_lmu"], looks["lmu"]
        )
    native = move(lmu, blasts)
    sets = {
        "lmu_blasts_as_pbc_reinhard": move(lmu, blasts, to_pbc["reinhard"], factor=1 / scale),
        "lmu_blasts_as_pbc_histogram": move(lmu, blasts, to_pbc["histogram"], factor=1 / scale),
        # The parts of the move apart, to tell which one a model fails on; optics as in the headline move.
        "lmu_blasts_colour_only_histogram": move(lmu, blasts, to_pbc["histogram"]),
        "lmu_blasts_scale_only": move(lmu, blasts, factor=1 / scale),
        "lmu_blasts_optics_only": optics(
            native,
            moves[HEADLINE]["blur_sigma"],
            moves[HEADLINE]["noise"],
            rng.standard_normal(native.shape, np.float32),
        ),
        HEADLINE: full_moves[HEADLINE],
        "lmu_blasts_as_pbc_full_reinhard": full_moves["lmu_blasts_as_pbc_full_reinhard"],
        "pbc_as_lmu_reinhard": move(pbc, pbc_test, to_lmu["reinhard"], factor=scale),
        "pbc_as_lmu_histogram": move(pbc, pbc_test, to_lmu["histogram"], factor=scale),
        "pbc_as_lmu_full_histogram": full_moves["pbc_as_lmu_full_histogram"],
        "pbc_as_lmu_full_reinhard": full_moves["pbc_as_lmu_full_reinhard"],
    }
    site_cells = (
        None
        if not site
        else np.concatenate(
            [
                moved_fully(
                    lmu, lmu_train, to_pbc["histogram"], framing["lmu_as_pbc"], moves[HEADLINE]
                ),
                pbc.images[pbc_train],
            ]
        )
    )
    return (
        sets,
        {
            **looks,
            "neutrophils": {"lmu": len(lmu_ngs), "pbc": len(pbc_ngs)},
            "framing": framing,
            "optics": moves,
        },
        site_cells,
    )


def embedder(config, seed: int, cut: str | None = None):
    """The backbone (BatchNorm folded, as the feature cache computes it) and a function embedding
    uint8 cells, optionally augmented, through the recipe's preprocessing. The backbone is
    ``config.model.backbone_weights``: "none" is a random one drawn from ``seed``; a weights file is
    the same for every seed.

    With ``cut`` (a backbone layer name, e.g. ``conv4_block6_out``) the features are that layer's
    output, and the third value is the backbone's part after it (to train); else None.
    """
    import keras
    import tensorflow as tf

    from aml_model.architecture import build_backbone, input_normalisation, seed_weights
    from aml_model.augment import build_augmenter
    from aml_model.inference import fold_batch_norm
    from aml_model.preprocess import normalise_for_resnet50

    full = build_backbone(config.model)
    if config.model.backbone_weights == "none":
        seed_weights(full, seed)
    full = fold_batch_norm(full)
    backbone = full if cut is None else keras.Model(full.input, full.get_layer(cut).output)
    tail = None if cut is None else keras.Model(full.get_layer(cut).output, full.output)
    normalisation = input_normalisation(config.model)

    @tf.function(reduce_retracing=True)
    def forward(batch):
        images = normalise_for_resnet50(batch)
        for layer in normalisation:
            images = layer(images)
        return tf.cast(backbone(images, training=False), tf.float16)

    def embed(
        images: np.ndarray, augment_seed: int | None = None, batch_size: int = 64
    ) -> np.ndarray:
        augmenter = (
            None
            if augment_seed is None
            else build_augmenter(config.train.augment, seed=augment_seed)
        )
        out = np.empty((len(images), *backbone.output.shape[1:]), np.float16)
        for start in range(0, len(images), batch_size):
            batch = tf.constant(images[start : start + batch_size], tf.float32)
            if augmenter is not None:
                batch = augmenter(batch, training=True)
            out[start : start + batch_size] = forward(batch).numpy()
        return out

    return embed, tail


def trainable_model(config, feature_shape: tuple, tail, seed: int):
    """The head alone, or (``tail`` given) a trainable copy of the backbone's last layers with the
    head on top: what trains on features cut before the backbone's end (``--trainable-from``)."""
    import keras

    from aml_model.architecture import build_head, compile_model, seed_weights

    if tail is None:
        return seed_weights(build_head(feature_shape, config.model), seed)
    head = seed_weights(build_head(tuple(tail.output.shape[1:]), config.model), seed)
    copy = keras.models.clone_model(tail)
    copy.set_weights(tail.get_weights())
    copy.trainable = True
    for layer in copy.layers:
        layer.trainable = True
    inputs = keras.Input(feature_shape)
    model = keras.Model(inputs, head(copy(inputs, training=False)), name="tail_and_head")
    return compile_model(model, config.model, jit_compile=True)


def parse_variant(name: str) -> tuple[str, dict[str, str]]:
    """``robust`` or an ablation ``robust:stain_normalisation=grey,scale=0``."""
    recipe, _, changes = name.partition(":")
    return recipe, dict(change.split("=", 1) for change in changes.split(",") if change)


def configure(
    name: str, image_size: int, epochs: int, patience: int, seed: int, backbone: str = "none"
):
    from aml_model.config import ExperimentConfig, ModelConfig, TrainConfig

    recipe, changes = parse_variant(name)
    config = ExperimentConfig.for_recipe(
        recipe,
        ModelConfig(image_size=image_size, backbone_weights=backbone),
        TrainConfig(epochs=epochs, early_stopping_patience=patience, seed=seed),
    )
    model_fields = {f.name for f in dataclasses.fields(config.model)}
    model = {k: v for k, v in changes.items() if k in model_fields}
    augment = {k: float(v) for k, v in changes.items() if k not in model_fields}
    return dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, **model),
        train=dataclasses.replace(
            config.train, augment=dataclasses.replace(config.train.augment, **augment)
        ),
    )


def backbone_label(recipe: str, backbone: str) -> str:
    """``robust`` for the random backbone, ``robust@<file stem>`` for a weights file."""
    return recipe if backbone == "none" else f"{recipe}@{Path(backbone).stem}"


def stops_short(recipe: str, backbone: str, args) -> bool:
    """Whether ``backbone`` is a partial weights file that ends before the layer ``recipe`` reads
    (a backbone pretrained for the robust recipe's third stage holds nothing of the paper's fifth)."""
    from aml_model.weights import partial_weights_layers

    held = None if backbone == "none" else partial_weights_layers(backbone)
    feature_layer = configure(
        recipe, args.image_size, args.epochs, args.patience, 0, backbone
    ).model.feature_layer
    return held is not None and feature_layer not in held


def ranking_auc(blasts: np.ndarray, others: np.ndarray) -> float:
    """ROC AUC of blast scores against other cells' scores."""
    from sklearn.metrics import roc_auc_score

    return float(
        roc_auc_score(np.r_[np.ones(len(blasts)), np.zeros(len(others))], np.r_[blasts, others])
    )


def run_recipe(recipe: str, backbone: str, seed: int, data: dict, args) -> dict:
    import keras

    from aml_model.collapse import MAX_ATTEMPTS, attempt_seed, check_collapse
    from aml_model.evaluate import compute_metrics, confident_errors, rates_by_group
    from aml_model.sampling import balanced_weights
    from aml_model.train import train_head

    config = configure(recipe, args.image_size, args.epochs, args.patience, seed, backbone)
    started = time.perf_counter()
    embed, tail = embedder(config, seed, args.trainable_from)
    train, val, test = data["train"], data["val"], data["test"]
    # A weights file's backbone is every seed's: the cells as they are are embedded once per file.
    key = None if backbone == "none" else (recipe, backbone, args.trainable_from)
    fixed = data.setdefault("embedded", {}).get(key) if key else None
    if fixed is None:
        fixed = {
            "train": embed(data["images"][train]),
            "val": embed(data["images"][val]),
            "test": embed(data["images"][test]),
            **{name: embed(images) for name, images in data["moved"].items()},
        }
        if key:
            data["embedded"][key] = fixed
    views = [fixed["train"]]
    views += [
        embed(data["images"][train], augment_seed=seed * 1000 + v) for v in range(1, args.views + 1)
    ]
    x_train = np.concatenate(views)
    y = (data["frame"]["label"] == "blast").to_numpy(int)
    y_train = np.tile(y[train], args.views + 1)
    w_train = np.tile(
        balanced_weights(data["frame"]["source"].to_numpy()[train], y[train]), args.views + 1
    )
    x_val, x_test = fixed["val"], fixed["test"]
    moved = {name: fixed[name] for name in data["moved"]}
    embed_seconds = time.perf_counter() - started

    w_val = balanced_weights(data["frame"]["source"].to_numpy()[val], y[val])
    # As retrain does (tasks/training.py): a collapsed head is drawn again from a derived seed.
    first_attempt_val_auc = None
    for attempt in range(MAX_ATTEMPTS):
        train_config = dataclasses.replace(config.train, seed=attempt_seed(seed, attempt))
        head = trainable_model(config, x_train.shape[1:], tail, train_config.seed)
        history, best = train_head(
            head,
            x_train,
            y_train,
            x_val,
            y[val],
            train_config,
            train_weights=w_train,
            val_weights=w_val,
        )

        def predict(features, head=head):
            return head.predict(features.astype(np.float32), batch_size=64, verbose=0).reshape(-1)

        p_val = predict(x_val)
        collapse = check_collapse(y[val], p_val)
        first_attempt_val_auc = (
            collapse.val_auc if first_attempt_val_auc is None else first_attempt_val_auc
        )
        if not collapse.collapsed:
            break
    p_test = predict(x_test)
    frame = data["frame"].iloc[test].reset_index(drop=True)
    lmu = (frame["source"] == "lmu").to_numpy()
    y_lmu, p_lmu = y[test][lmu], p_test[lmu]
    lmu_metrics = compute_metrics(y_lmu, p_lmu, config.threshold)
    by_type = rates_by_group(frame, p_test, config.threshold, ["source", "cell_type"])
    p_moved = {name: predict(features) for name, features in moved.items()}
    # Moved blasts are ranked against the native cells of the other lab, native blasts against moved ones.
    p_blasts, p_pbc = p_lmu[y_lmu == 1], p_test[~lmu]
    cross_lab_auc = {"unmoved": ranking_auc(p_blasts, p_pbc)} | {
        name: ranking_auc(p, p_pbc) if name.startswith("lmu_blasts") else ranking_auc(p_blasts, p)
        for name, p in p_moved.items()
    }
    result = {
        "recipe": recipe,
        "backbone": backbone,
        "seed": seed,
        "cross_lab_auc": cross_lab_auc,
        "trainable_from": args.trainable_from or "head",
        "trainable_weights": int(sum(np.prod(w.shape) for w in head.trainable_weights)),
        "val_auc": collapse.val_auc,
        "collapsed": collapse.collapsed,
        "attempts": attempt + 1,
        "first_attempt_val_auc": first_attempt_val_auc,
        "epochs_run": len(history["loss"]),
        "best_epoch": best + 1,
        "lmu_auc": lmu_metrics.roc_auc,
        "lmu_accuracy": lmu_metrics.accuracy,
        "lmu_sensitivity": lmu_metrics.sensitivity,
        "lmu_specificity": lmu_metrics.specificity,
        "pbc_blast_like_by_type": {
            r.cell_type: r.blast_like_rate for r in by_type.itertuples() if r.source == "pbc"
        },
        "moved_blast_like": {
            name: float(np.mean(p >= config.threshold)) for name, p in p_moved.items()
        },
        "embed_seconds": embed_seconds,
        "seconds": time.perf_counter() - started,
    }
    result["pbc_max_blast_like"] = max(result["pbc_blast_like_by_type"].values())
    # One confident error among 70 + 70 cells moves the ROC AUC by up to 0.014: name the cells, so
    # that a shortfall can be told from a wrong label by eye.
    errors = confident_errors(
        frame[lmu][["file", "cell_type", "label"]], p_lmu, config.threshold, n=5
    )
    result["lmu_errors"] = errors.round({"probability": 4}).to_dict("records")
    result["lmu_auc_ci95"] = auc_interval(y_lmu, p_lmu, seed)
    result["site_calibration"] = calibrate_on_moved(
        p_moved["lmu_blasts_as_pbc_reinhard"], p_moved["pbc_as_lmu_reinhard"], seed
    )
    keras.backend.clear_session()
    return result


def auc_interval(
    labels: np.ndarray, scores: np.ndarray, seed: int, resamples: int = 2000
) -> list[float]:
    """95% percentile-bootstrap interval of the ROC AUC of ``scores`` (0..1) against ``labels``
    (1 = blast), resampling blasts and others separately: how far the figure of a few held-out
    cells could move on another draw of as many cells."""
    from scipy.stats import bootstrap

    interval = bootstrap(
        (scores[labels == 1], scores[labels == 0]),
        ranking_auc,
        vectorized=False,
        method="percentile",
        n_resamples=resamples,
        random_state=seed,
    ).confidence_interval
    return [float(interval.low), float(interval.high)]


def calibrate_on_moved(
    p_blasts: np.ndarray, p_others: np.ndarray, seed: int, n_blast: int = 35, n_other: int = 50
) -> dict:
    """What a site calibration on ~100 labelled cells buys where the lab's look has moved.

    A "site" whose cells are the recoloured, rescaled ones: the model's scores of half its moved
    blasts and 50 moved normal cells fit the calibration (``aml-smear calibrate``); the rest of the
    moved cells are scored before and after.
    """
    from aml_model.calibration import fit_site_calibration
    from aml_model.errors import CalibrationError

    rng = np.random.default_rng(seed)
    blasts, others = rng.permutation(len(p_blasts)), rng.permutation(len(p_others))
    fit_b, rest_b = (
        blasts[: min(n_blast, len(blasts) // 2)],
        blasts[min(n_blast, len(blasts) // 2) :],
    )
    fit_o, rest_o = (
        others[: min(n_other, len(others) // 2)],
        others[min(n_other, len(others) // 2) :],
    )
    y = np.r_[np.ones(len(fit_b)), np.zeros(len(fit_o))]
    try:
        calibration = fit_site_calibration(
            y, np.r_[p_blasts[fit_b], p_others[fit_o]], "moved", "benchmark", minimum=5
        )
    except CalibrationError as exc:
        return {"fitted": False, "reason": str(exc)}
    threshold = calibration.threshold
    return {
        "fitted": True,
        "n_fit": int(len(y)),
        "n_blast_fit": int(len(fit_b)),
        "blasts_before": float(np.mean(p_blasts[rest_b] >= 0.5)),
        "blasts_after": float(np.mean(calibration.apply(p_blasts[rest_b]) >= threshold)),
        "others_before": float(np.mean(p_others[rest_o] >= 0.5)),
        "others_after": float(np.mean(calibration.apply(p_others[rest_o]) >= threshold)),
    }


def prepare(args) -> dict:
    from aml_model.split import split_indices

    lmu = load_source(LMU, "lmu", args.image_size, args.limit)
    pbc = load_source(PBC, "pbc", args.image_size, args.limit)
    frame = pd.concat([lmu.frame, pbc.frame], ignore_index=True)
    images = np.concatenate([lmu.images, pbc.images])
    strata = (frame["source"] + "/" + frame["cell_type"]).to_numpy()
    split = split_indices(strata, None, (0.8, 0.1, 0.1), seed=args.split_seed)
    n_lmu = len(lmu.frame)
    ngs = frame["cell_type"] == "segmented neutrophil"
    train_mask = np.zeros(len(frame), bool)
    train_mask[split["train"]] = True
    scale = nucleus_diameter(
        images[(ngs & (frame["source"] == "lmu")).to_numpy() & train_mask]
    ) / nucleus_diameter(images[(ngs & (frame["source"] == "pbc")).to_numpy() & train_mask])
    rng = np.random.default_rng(args.split_seed)

    def local(indices, lower, upper):
        return np.array([i - lower for i in indices if lower <= i < upper])

    moved, look, site = moved_sets(
        lmu,
        pbc,
        local(split["train"], 0, n_lmu),
        local(split["train"], n_lmu, len(frame)),
        local(split["test"], 0, n_lmu),
        local(split["test"], n_lmu, len(frame)),
        args.image_size,
        scale,
        rng,
        site=bool(args.site_pretrain),
    )
    return {
        "frame": frame,
        "images": images,
        "moved": moved,
        "look": look,
        "scale": scale,
        "site": site,
        **split,
    }


def site_pretrain(start: str, cells: np.ndarray, steps: int, image_size: int, folder: Path) -> Path:
    """Continue pretraining the backbone in the partial weights file ``start`` on a site's own
    unlabelled cells (`(n, s, s, 3)` uint8), as ``pretrain-backbone --start-from`` does, and write
    the site's backbone as ``folder/site-<start stem>.h5``."""
    import dataclasses

    from aml_model.config import ExperimentConfig, ModelConfig, PretrainConfig
    from aml_model.pretrain import Pretrainer, recalibrate_batch_norm, trained_backbone
    from aml_model.weights import save_partial_weights

    recipe = ExperimentConfig.for_recipe(
        "robust", ModelConfig(image_size=image_size, backbone_weights="none")
    )
    # Views of half the cell's side, as the shipped backbone's (112 px of 224), at any input size.
    config = dataclasses.replace(
        PretrainConfig(),
        steps=steps,
        view_size=max(32, image_size // 2),
        warmup_steps=min(PretrainConfig.warmup_steps, steps // 10),
    )
    pretrainer = Pretrainer(recipe.model, recipe.train.augment, config, initial_weights=start)
    # In sha256 order in the flow; here a fixed shuffle does the same: batches mix both kinds of cell.
    pool = cells[np.random.default_rng(0).permutation(len(cells))]
    state = pretrainer.train(
        pool,
        steps,
        on_progress=lambda step, loss: (
            step % 25
            or print(
                f"site pretraining step {step}/{steps}: loss {np.mean(pretrainer.losses[-25:]):.3f}",
                flush=True,
            )
        ),
    )
    backbone = recalibrate_batch_norm(
        trained_backbone(state, recipe.model, config), recipe.model, pool[:1024]
    )
    path = folder / f"site-{Path(start).stem}.h5"
    save_partial_weights(backbone, recipe.model.feature_layer, path)
    return path


def spread(values: list[float]) -> dict[str, float]:
    """Mean, standard deviation, least and greatest over seeds."""
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
    }


def summarise(results: list[dict]) -> dict:
    """Per (recipe, backbone), labelled by :func:`backbone_label`, in the order run."""
    summary = {}
    for recipe, backbone in dict.fromkeys((r["recipe"], r["backbone"]) for r in results):
        runs = [r for r in results if (r["recipe"], r["backbone"]) == (recipe, backbone)]
        headline = spread([r["cross_lab_auc"][HEADLINE] for r in runs])
        summary[backbone_label(recipe, backbone)] = {
            "backbone": backbone,
            "seeds": [r["seed"] for r in runs],
            "cross_lab_auc_full": headline["mean"],
            **{
                f"cross_lab_auc_full_{key}": value
                for key, value in headline.items()
                if key != "mean"
            },
            "cross_lab_auc": {
                m: spread([r["cross_lab_auc"][m] for r in runs]) for m in runs[0]["cross_lab_auc"]
            },
            "val_auc": [round(r["val_auc"], 4) for r in runs],
            "collapsed": sum(r["collapsed"] for r in runs),
            **{
                key: float(np.mean([r[key] for r in runs]))
                for key in ("lmu_auc", "lmu_accuracy", "pbc_max_blast_like")
            },
            "pbc_blast_like_by_type": {
                t: float(np.mean([r["pbc_blast_like_by_type"][t] for r in runs]))
                for t in runs[0]["pbc_blast_like_by_type"]
            },
            "moved_blast_like": {
                m: float(np.mean([r["moved_blast_like"][m] for r in runs]))
                for m in runs[0]["moved_blast_like"]
            },
            "site_calibration": {
                k: float(np.mean([r["site_calibration"][k] for r in runs]))
                for k in ("blasts_before", "blasts_after", "others_before", "others_after")
            }
            if all(r["site_calibration"]["fitted"] for r in runs)
            else None,
        }
    return summary


def print_look(look: dict) -> None:
    def optics_text(values: dict) -> str:
        return f"blur_effect {values['blur_effect']:.3f}, noise {values['noise']:.2f}"

    def framing_text(values: dict) -> str:
        return f"nucleus {values['nucleus_diameter']:.1f} px, {values['nucleus_offset']:.3f} of the frame off centre"

    cells = look["neutrophils"]
    print_table(
        f"look of training neutrophils ({cells['lmu']} LMU, {cells['pbc']} PBC) at the input size "
        "(blur_effect: 0 sharp, 1 blurred; noise in grey levels)",
        [
            *[
                (lab.upper(), f"{optics_text(look[lab])}; {framing_text(look[lab])}")
                for lab in ("lmu", "pbc")
            ],
            *[
                (
                    f"{name}: scale x{move['scale']:.2f}, centring x{move['centring']:.2f}",
                    framing_text(move["after"]),
                )
                for name, move in look["framing"].items()
            ],
            *[
                (
                    f"{name}: blur sigma {move['blur_sigma']:.2f} px, noise {move['noise']:.2f}",
                    f"{optics_text(move['before'])} -> {optics_text(move['after'])}",
                )
                for name, move in look["optics"].items()
            ],
        ],
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--recipes",
        nargs="+",
        default=["paper", "robust"],
        help="recipes, or ablations of one: robust:stain_normalisation=grey,scale=0",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--robust-seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2, 3, 4],
        help="seeds of the robust recipe (the collapse check wants five)",
    )
    parser.add_argument(
        "--backbone-weights",
        nargs="+",
        default=["none"],
        help="the recipes' backbones, each run and summarised apart: none (random, drawn from "
        "each run's seed) or weights files, the same for every seed (a whole ResNet50 .h5, "
        "or a partial file of its first stages, as pretrain-backbone writes)",
    )
    parser.add_argument(
        "--site-pretrain",
        default=None,
        metavar="FILE",
        help="also continue pretraining this partial weights file on a site's own unlabelled "
        "cells (every training LMU cell moved into PBC's look by the headline move, and the "
        "training PBC cells) and run the robust recipe on the result too",
    )
    parser.add_argument("--site-steps", type=int, default=200, help="steps of --site-pretrain")
    parser.add_argument("--views", type=int, default=1, help="augmented views per training cell")
    parser.add_argument(
        "--trainable-from",
        default=None,
        help="train the backbone's layers after this one too (e.g. conv5_block2_out: the last "
        "block; conv4_block6_out: the last stage), on features cut there; for recipes "
        "that read the last stage (paper)",
    )
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument(
        "--limit", type=int, default=None, help="cells per class and source (smoke runs)"
    )
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)

    data = prepare(args)
    print(
        f"cells: {len(data['frame'])}; split {len(data['train'])}/{len(data['val'])}/{len(data['test'])}; "
        f"LMU/PBC neutrophil size ratio {data['scale']:.2f}",
        flush=True,
    )
    print_look(data["look"])
    backbones = list(args.backbone_weights)
    if args.site_pretrain:
        started = time.perf_counter()
        backbones.append(
            str(
                site_pretrain(
                    args.site_pretrain,
                    data["site"],
                    args.site_steps,
                    args.image_size,
                    args.output.parent,
                )
            )
        )
        print(
            f"site backbone {backbones[-1]}: {args.site_steps} steps on {len(data['site'])} cells in "
            f"{time.perf_counter() - started:.0f} s",
            flush=True,
        )
    results, skipped = [], []
    for recipe in args.recipes:
        for backbone in backbones:
            if stops_short(recipe, backbone, args):
                skipped.append(backbone_label(recipe, backbone))
                print(
                    f"skipped {skipped[-1]}: {backbone} ends before the layer {recipe} reads",
                    flush=True,
                )
                continue
            for seed in args.robust_seeds if recipe == "robust" else args.seeds:
                result = run_recipe(recipe, backbone, seed, data, args)
                results.append(result)
                print(
                    json.dumps(
                        {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}
                    ),
                    flush=True,
                )
    summary = summarise(results)
    payload = {
        "image_size": args.image_size,
        "views": args.views,
        "epochs": args.epochs,
        "backbone_weights": backbones,
        "skipped": skipped,
        "scale_ratio": data["scale"],
        "look": data["look"],
        "split_sizes": {k: len(data[k]) for k in ("train", "val", "test")},
        "summary": summary,
        "runs": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(payload, indent=2))
    for label, s in summary.items():
        print_table(
            f"{label} (seeds {s['seeds']})",
            [
                (
                    f"cross-lab ROC AUC, {HEADLINE} vs. all PBC cells: mean (std; min-max)",
                    (
                        f"{s['cross_lab_auc_full']:.4f} ({s['cross_lab_auc_full_std']:.4f}; "
                        f"{s['cross_lab_auc_full_min']:.4f}-{s['cross_lab_auc_full_max']:.4f})"
                    ),
                ),
                *[
                    (
                        f"cross-lab ROC AUC, {m}",
                        f"{v['mean']:.4f} ({v['std']:.4f}; {v['min']:.4f}-{v['max']:.4f})",
                    )
                    for m, v in s["cross_lab_auc"].items()
                    if m != HEADLINE
                ],
                (
                    "LMU hold-out ROC AUC / accuracy",
                    f"{s['lmu_auc']:.4f} / {s['lmu_accuracy']:.4f}",
                ),
                *[
                    (f"PBC {t} blast-like", f"{v:.3f}")
                    for t, v in s["pbc_blast_like_by_type"].items()
                ],
                *[(f"{m} blast-like", f"{v:.3f}") for m, v in s["moved_blast_like"].items()],
                *(
                    [
                        (
                            "calibrated on 100 moved cells: blasts / others blast-like, before -> after",
                            (
                                f"{c['blasts_before']:.3f} -> {c['blasts_after']:.3f} / {c['others_before']:.3f} -> "
                                f"{c['others_after']:.3f}"
                            ),
                        )
                    ]
                    if (c := s["site_calibration"])
                    else []
                ),
                ("validation ROC AUC per seed", ", ".join(f"{v:.3f}" for v in s["val_auc"])),
                ("collapsed seeds", str(s["collapsed"])),
            ],
        )
    record(
        {
            f"robustness_{recipe}_{key}": value
            for recipe, s in summary.items()
            for key, value in s.items()
            if value is not None and not isinstance(value, dict | list)
        }
    )
    return payload


if __name__ == "__main__":
    main()
