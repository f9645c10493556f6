"""Grad-CAM on models of the paper's architecture trained here (frozen untrained backbone, head trained)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from aml_model.architecture import build_head, build_model, seed_weights
from aml_model.collapse import MAX_ATTEMPTS, attempt_seed, check_collapse
from aml_model.config import ExperimentConfig, ModelConfig, PreprocessConfig
from aml_model.explain import build_gradcam_model, compute_gradcam, overlay_heatmaps
from aml_model.predict import predict_batch
from aml_model.preprocess import decode_cell, normalise_for_resnet50
from tests.corpus import lmu_rows


def train_paper_model(
    images: np.ndarray, labels: np.ndarray, epochs: int, seed: int = 0
) -> keras.Model:
    """The paper's model with a frozen untrained backbone, its head trained on the backbone's features.

    The backbone is frozen, so embedding the cells once and training the head alone is the same
    training as the full model's, in a fraction of the time (the feature-cache path of retrain).
    """
    keras.utils.set_random_seed(seed)
    config = ModelConfig(image_size=images.shape[1], backbone_weights="none")
    # Keras draws initial weights from Python's global random module, which the Prefect and Dask
    # threads of earlier tests in the same process advance: seed_weights depends on the seed alone.
    model = seed_weights(build_model(config), seed)
    features = model.get_layer("resnet50").predict(
        normalise_for_resnet50(images.astype(np.float32)), batch_size=32, verbose=0
    )
    # As retrain does (aml_model/collapse.py): a head that collapsed to one answer is drawn again.
    for attempt in range(MAX_ATTEMPTS):
        head = seed_weights(build_head(features.shape[1:], config), attempt_seed(seed, attempt))
        head.optimizer.learning_rate.assign(
            1e-3
        )  # 10x the paper's rate: a few epochs are enough here
        head.fit(
            features,
            labels.astype(np.float32),
            epochs=epochs,
            batch_size=32,
            shuffle=True,
            verbose=0,
        )
        if not check_collapse(labels, head.predict(features, verbose=0).ravel()).collapsed:
            break
    for layer in head.layers:
        model.get_layer(layer.name).set_weights(layer.get_weights())
    return model


@pytest.fixture(scope="module")
def real_cells_model(lmu_cells):
    """A 64x64 model (2x2 conv5 map) trained on 80 blasts and 80 normal real cells, and 8 other blasts."""
    rows = lmu_rows(lmu_cells)
    blasts = [r for r in rows if r["label"] == "blast"][:88]
    normals = [r for r in rows if r["label"] == "normal"][:80]
    config = PreprocessConfig(image_size=64)

    def decode(picked: list[dict]) -> np.ndarray:
        return np.stack(
            [decode_cell((lmu_cells / r["file"]).read_bytes(), r["file"], config) for r in picked]
        )

    images = np.concatenate([decode(blasts[:80]), decode(normals)])
    model = train_paper_model(images, np.r_[np.ones(80), np.zeros(80)], epochs=8)
    return model, decode(blasts[80:])


def test_gradcam_of_real_cells_is_a_heatmap_per_cell(real_cells_model):
    model, cells = real_cells_model
    cam = compute_gradcam(model, cells, batch_size=5)
    assert cam.heatmaps.shape == (8, 64, 64) and cam.heatmaps.dtype == np.float32
    assert cam.heatmaps.min() >= 0.0 and cam.heatmaps.max() <= 1.0
    assert all(h.max() - h.min() > 0.1 for h in cam.heatmaps), (
        "every heatmap shows where, not a flat map"
    )
    assert cam.overlays.shape == (8, 64, 64, 3) and cam.overlays.dtype == np.uint8
    # The logit is the model's own pre-activation: its sigmoid is the model's probability.
    np.testing.assert_allclose(cam.probabilities, predict_batch(model, cells), atol=1e-4)


def test_gradcam_model_reuses_the_models_weights(real_cells_model):
    model, cells = real_cells_model
    gradcam_model = build_gradcam_model(model)
    feature_map, logit = gradcam_model(normalise_for_resnet50(cells[:2].astype(np.float32)))
    assert tuple(feature_map.shape) == (2, 2, 2, 2048) and tuple(logit.shape) == (2, 1)
    shared = {id(variable) for variable in model.weights}
    assert all(id(variable) in shared for variable in gradcam_model.weights), "no copied weights"


def test_gradcam_of_a_robust_model_reads_its_pooled_map_after_its_input_normalisation(
    real_cells_model,
):
    _, cells = real_cells_model
    config = ExperimentConfig.for_recipe(
        "robust", ModelConfig(image_size=64, backbone_weights="none")
    ).model
    model = seed_weights(build_model(config), 0)
    cam = compute_gradcam(model, cells[:4])
    # conv3_block4_out, the map the robust recipe pools, is s/8 on a side.
    feature_map, _ = build_gradcam_model(model)(
        normalise_for_resnet50(cells[:1].astype(np.float32))
    )
    assert tuple(feature_map.shape) == (1, 8, 8, 512)
    # The same probability as the model's own: scale and colour normalisation applied first.
    np.testing.assert_allclose(cam.probabilities, predict_batch(model, cells[:4]), atol=1e-5)


def test_cells_that_do_not_fit_the_model_are_refused(real_cells_model):
    model, cells = real_cells_model
    with pytest.raises(ValueError, match=r"do not fit the model input \(n, 64, 64, 3\) uint8"):
        compute_gradcam(model, cells[:, :32, :32])
    with pytest.raises(ValueError, match="dtype float32"):
        compute_gradcam(model, cells.astype(np.float32))


BLOB_SIZE, BLOB_RADIUS = 128, 12


def draw_cells(rng: np.random.Generator, n: int, blob: bool) -> tuple[np.ndarray, np.ndarray]:
    """`(n, 128, 128, 3)` grey noise images, with a bright disc at a random place when ``blob``;
    returns the images and `(n, 2)` disc centres (row, column)."""
    images = rng.integers(90, 130, (n, BLOB_SIZE, BLOB_SIZE, 3)).astype(np.uint8)
    centres = rng.integers(BLOB_RADIUS + 2, BLOB_SIZE - BLOB_RADIUS - 2, (n, 2))
    rows, cols = np.mgrid[:BLOB_SIZE, :BLOB_SIZE]
    if blob:
        for image, (row, col) in zip(images, centres, strict=True):
            image[(rows - row) ** 2 + (cols - col) ** 2 <= BLOB_RADIUS**2] = 250
    return images, centres


def test_heatmap_peak_lies_on_the_blob_the_model_learned_to_detect():
    # 128 px input: ResNet50 downsamples 32x, so the conv5 map is 4x4 and each of its cells
    # covers 32x32 px, which bounds how precisely Grad-CAM can place anything.
    rng = np.random.default_rng(0)
    with_blob, _ = draw_cells(rng, 40, blob=True)
    without, _ = draw_cells(rng, 40, blob=False)
    model = train_paper_model(
        np.concatenate([with_blob, without]), np.r_[np.ones(40), np.zeros(40)], epochs=15
    )
    test_blob, centres = draw_cells(rng, 8, blob=True)
    test_plain, _ = draw_cells(rng, 8, blob=False)
    cam = compute_gradcam(model, np.concatenate([test_blob, test_plain]))
    predicted = cam.probabilities >= 0.5
    assert (predicted == np.r_[np.ones(8), np.zeros(8)]).mean() >= 0.9, (
        "the model must detect the blob first"
    )

    rows, cols = np.mgrid[:BLOB_SIZE, :BLOB_SIZE]
    ratios = []
    for heatmap, (row, col) in zip(cam.heatmaps[:8], centres, strict=True):
        peak = np.unravel_index(np.argmax(heatmap), heatmap.shape)
        # Within the disc's radius plus one conv5 cell's width of its centre.
        assert np.hypot(peak[0] - row, peak[1] - col) <= BLOB_RADIUS + BLOB_SIZE / 4
        inside = (rows - row) ** 2 + (cols - col) ** 2 <= BLOB_RADIUS**2
        ratios.append(heatmap[inside].mean() / heatmap.mean())
    assert min(ratios) > 1.0 and np.mean(ratios) > 1.3, (
        f"the disc is hotter than the rest: {np.round(ratios, 2)}"
    )


def test_overlay_blends_the_jet_colour_map_over_the_cell():
    cells = np.full((2, 4, 4, 3), 100, np.uint8)
    heat = np.zeros((2, 4, 4), np.float32)
    heat[1] = 1.0
    overlays = overlay_heatmaps(cells, heat, alpha=0.5)
    assert overlays.shape == (2, 4, 4, 3) and overlays.dtype == np.uint8
    cold, hot = overlays[0, 0, 0].astype(int), overlays[1, 0, 0].astype(int)
    assert cold[2] > cold[0] and hot[0] > hot[2], "0 is blue and 1 is red in jet"
