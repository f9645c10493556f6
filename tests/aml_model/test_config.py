import pytest

from aml_model.config import (
    AugmentConfig,
    ExperimentConfig,
    ModelConfig,
    PreprocessConfig,
    TrainConfig,
)
from aml_model.errors import ConfigError


def test_defaults_are_the_papers():
    config = ExperimentConfig()
    assert config.model.image_size == 224
    assert config.model.head_units == 128
    assert config.model.backbone_weights == "imagenet"
    assert config.model.learning_rate == 1e-4
    assert config.train.epochs == 50
    assert (config.train.train_fraction, config.train.val_fraction, config.train.test_fraction) == (
        0.8,
        0.1,
        0.1,
    )
    assert config.threshold == 0.5
    augment = config.train.augment
    assert augment.rotation_degrees == 20
    assert augment.zoom == 0.2
    assert augment.width_shift == augment.height_shift == 0.2
    assert augment.horizontal_flip and augment.vertical_flip


def test_round_trip_through_dict():
    config = ExperimentConfig.tiny(image_size=48, epochs=3, seed=7)
    assert ExperimentConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: ModelConfig(image_size=16), "image_size=16"),
        (lambda: ModelConfig(backbone_weights_sha256="abc"), "backbone_weights_sha256"),
        (lambda: ModelConfig(learning_rate=0), "learning_rate"),
        (lambda: TrainConfig(train_fraction=0.7), "fractions"),
        (lambda: TrainConfig(epochs=0), "epochs=0"),
        (lambda: AugmentConfig(zoom=1.5), "zoom=1.5"),
        (lambda: AugmentConfig(fill_mode="mirror"), "fill_mode"),
        (lambda: ExperimentConfig(threshold=1.0), "threshold"),
        (lambda: PreprocessConfig(max_pixels=0), "max_pixels"),
    ],
)
def test_invalid_values_are_named(build, match):
    with pytest.raises(ConfigError, match=match):
        build()


def test_unknown_keys_are_refused():
    data = ExperimentConfig().to_dict()
    data["model"]["dropout"] = 0.5
    with pytest.raises(TypeError, match="dropout"):
        ExperimentConfig.from_dict(data)


def test_the_paper_recipe_is_the_papers_configuration():
    from aml_model.config import ExperimentConfig

    assert ExperimentConfig.for_recipe("paper") == ExperimentConfig()
    assert (
        ExperimentConfig().model.stain_normalisation == "none"
        and ExperimentConfig().train.augment.hue == 0
    )


def test_the_robust_recipe_changes_its_model_fields_and_augmentation_only():
    import dataclasses

    from aml_model.config import (
        ROBUST_AUGMENT,
        ROBUST_MODEL,
        ExperimentConfig,
        ModelConfig,
        TrainConfig,
    )

    model, train = (
        ModelConfig(image_size=64, backbone_weights="none"),
        TrainConfig(epochs=3, seed=4),
    )
    robust = ExperimentConfig.for_recipe("robust", model, train)
    assert robust.recipe == "robust" and robust.model.stain_normalisation == "channel"
    assert (
        robust.model.feature_layer == "conv3_block4_out"
        and robust.model.feature_pooling == "mean_std"
    )
    assert (
        dataclasses.replace(robust.model, **{k: getattr(model, k) for k in ROBUST_MODEL}) == model
    )
    assert robust.model.image_size == 64 and robust.train.epochs == 3 and robust.train.seed == 4
    assert {k: getattr(robust.train.augment, k) for k in ROBUST_AUGMENT} == ROBUST_AUGMENT
    assert dataclasses.replace(
        robust.train.augment, **{k: 0.0 for k in ROBUST_AUGMENT}
    ) == dataclasses.replace(train.augment, **{k: 0.0 for k in ROBUST_AUGMENT})
    assert ExperimentConfig.from_dict(robust.to_dict()) == robust


def test_unknown_recipe_and_stain_mode_are_refused():
    from aml_model.config import ExperimentConfig, ModelConfig

    with pytest.raises(ConfigError, match="recipe='fast'"):
        ExperimentConfig.for_recipe("fast")
    with pytest.raises(ConfigError, match="stain_normalisation='macenko'"):
        ModelConfig(stain_normalisation="macenko")
    with pytest.raises(ConfigError, match="feature_layer='conv3_block3_out'"):
        ModelConfig(feature_layer="conv3_block3_out")
    with pytest.raises(ConfigError, match="feature_pooling='max'"):
        ModelConfig(feature_pooling="max")
