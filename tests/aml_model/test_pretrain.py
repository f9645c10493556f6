import keras
import numpy as np
import pytest
import tensorflow as tf

from aml_model.config import ExperimentConfig, ModelConfig, PretrainConfig
from aml_model.errors import ConfigError
from aml_model.pretrain import (
    Pretrainer,
    PretrainState,
    nt_xent,
    recalibrate_batch_norm,
    trained_backbone,
)

ROBUST = ExperimentConfig.for_recipe("robust", ModelConfig(image_size=48, backbone_weights="none"))
TINY = PretrainConfig(steps=6, batch_size=4, view_size=32, warmup_steps=2, checkpoint_every=2)


@pytest.fixture(scope="module")
def pool():
    rng = np.random.default_rng(0)
    cells = np.full((12, 48, 48, 3), 230, np.uint8)
    # A dark disc of another size in each: a nucleus for the scale normalisation to find.
    yy, xx = np.mgrid[:48, :48]
    for i, cell in enumerate(cells):
        cell[(yy - 24) ** 2 + (xx - 24) ** 2 < (6 + i) ** 2] = rng.integers(40, 120, 3)
    return cells


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("method", "byol", "method='byol' is invalid"),
        ("batch_size", 1, "batch_size=1 is invalid: expected an integer >= 2"),
        ("view_size", 16, "view_size=16 is invalid"),
        ("min_crop", 0.0, "min_crop=0.0 is invalid"),
        ("warmup_steps", 6, "warmup_steps=6 is invalid"),
        ("temperature", 0.0, "temperature=0.0 is invalid"),
        ("pool_cells", 3, "pool_cells=3 is invalid: expected at least batch_size"),
    ],
)
def test_bad_pretraining_settings_are_refused_by_name(field, value, match):
    with pytest.raises(ConfigError, match=match):
        PretrainConfig(**{**TINY.to_dict(), field: value})


def test_nt_xent_is_low_for_matching_views_and_log_of_the_batch_for_indistinct_ones():
    batch = 3
    distinct = tf.constant(np.eye(batch, 4), tf.float32)
    aligned = nt_xent(tf.concat([distinct, distinct], 0), batch, temperature=0.1)
    # Each view's partner at similarity 1 against 2 * batch - 2 others at 0: -log(e^10 / (e^10 + 4)).
    assert float(aligned) == pytest.approx(
        -np.log(np.exp(10) / (np.exp(10) + 4)), rel=1e-3
    )  # float32
    same = tf.concat([tf.ones((batch, 4)), tf.ones((batch, 4))], 0) / 2.0
    assert float(nt_xent(same, batch, temperature=0.1)) == pytest.approx(
        np.log(2 * batch - 1), rel=1e-5
    )


def test_a_resumed_pretraining_continues_exactly_as_the_uninterrupted_one(pool):
    checkpoints = []
    whole = Pretrainer(ROBUST.model, ROBUST.train.augment, TINY).train(
        pool, TINY.steps, on_checkpoint=lambda state: checkpoints.append(state.to_bytes())
    )
    assert [PretrainState.from_bytes(c).step for c in checkpoints] == [2, 4, 6]
    assert len(whole.losses) == TINY.steps and all(np.isfinite(whole.losses))

    resumed = Pretrainer(ROBUST.model, ROBUST.train.augment, TINY)
    resumed.restore(PretrainState.from_bytes(checkpoints[0]))
    assert resumed.step_number == 2
    finished = resumed.train(pool, until=100)  # never past config.steps
    assert finished.step == TINY.steps
    assert finished.losses == whole.losses
    for a, b in zip(finished.weights, whole.weights, strict=True):
        np.testing.assert_array_equal(a, b)
    assert finished.seconds > PretrainState.from_bytes(checkpoints[0]).seconds


def test_training_changes_the_stages_the_recipe_reads_and_only_those(pool):
    pretrainer = Pretrainer(ROBUST.model, ROBUST.train.augment, TINY)
    before = pretrainer.state()
    after = pretrainer.train(pool, 2)
    moved = [not np.array_equal(a, b) for a, b in zip(before.weights, after.weights, strict=True)]
    assert sum(moved) > len(moved) // 2
    backbone = trained_backbone(after, ROBUST.model, TINY)
    assert backbone.input_shape == (None, 48, 48, 3)
    trained = pretrainer.encoder.get_layer("conv3_block4_3_conv").get_weights()[0]
    np.testing.assert_array_equal(
        backbone.get_layer("conv3_block4_3_conv").get_weights()[0], trained
    )
    # Nothing reads the fourth stage: it stays as the seed drew it.
    untouched = (
        trained_backbone(before, ROBUST.model, TINY)
        .get_layer("conv4_block1_1_conv")
        .get_weights()[0]
    )
    np.testing.assert_array_equal(
        backbone.get_layer("conv4_block1_1_conv").get_weights()[0], untouched
    )


def test_cells_of_the_wrong_size_are_refused(pool):
    with pytest.raises(
        ValueError, match=r"pretraining cells are \(32, 32, 3\), the model's input is \(48, 48, 3\)"
    ):
        Pretrainer(ROBUST.model, ROBUST.train.augment, TINY).train(pool[:, :32, :32], 1)


def test_batch_norm_statistics_are_re_estimated_on_the_cells(pool):
    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(48, 48, 3))
    bn = backbone.get_layer("conv1_bn")
    assert not bn.moving_mean.numpy().any()  # Keras' initial statistics
    recalibrate_batch_norm(backbone, ROBUST.model, pool, batch_size=4, passes=3)
    assert bn.momentum == 0.99, "the layers' own momentum is restored"
    from aml_model.architecture import input_normalisation
    from aml_model.preprocess import normalise_for_resnet50

    images = normalise_for_resnet50(pool.astype(np.float32))
    for layer in input_normalisation(ROBUST.model):
        images = layer(images)
    conv = keras.Model(backbone.input, backbone.get_layer("conv1_conv").output)(images).numpy()
    np.testing.assert_allclose(
        bn.moving_mean.numpy(), conv.mean(axis=(0, 1, 2)), rtol=0.2, atol=0.05 * np.abs(conv).mean()
    )


def test_the_views_add_tone_greyscale_and_blur_to_the_recipes_augmentation_only_when_asked():
    from aml_model.augment import build_augmenter
    from aml_model.pretrain import view_augmenter

    def kinds(config):
        return [
            type(layer).__name__ for layer in view_augmenter(ROBUST.train.augment, config).layers
        ]

    recipe = kinds(PretrainConfig(**{**TINY.to_dict(), "tone": 0.0, "greyscale": 0.0, "blur": 0.0}))
    assert recipe == [
        type(layer).__name__ for layer in build_augmenter(ROBUST.train.augment).layers
    ]
    extras = PretrainConfig(**{**TINY.to_dict(), "tone": 0.3, "greyscale": 0.2, "blur": 1.5})
    assert kinds(extras) == [*recipe, "RandomToneCurve", "RandomGrayscale", "RandomGaussianBlur"]


def test_a_diverged_pretraining_stops_with_an_error_that_is_not_retried(pool):
    from aml_model.errors import AmlSmearError, PretrainingDivergedError

    # A temperature this small overflows the similarities: the loss is not finite at the first step.
    diverging = PretrainConfig(**{**TINY.to_dict(), "temperature": 1e-40})
    with pytest.raises(
        PretrainingDivergedError, match="loss is nan at step 0: lower the learning rate"
    ) as caught:
        Pretrainer(ROBUST.model, ROBUST.train.augment, diverging).train(pool, 2)
    assert isinstance(caught.value, AmlSmearError)  # tasks.retry does not retry these
