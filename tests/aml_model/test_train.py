import keras
import numpy as np
import pytest

from aml_model.architecture import build_model
from aml_model.config import ExperimentConfig
from aml_model.data import make_dataset
from aml_model.synthetic import render_cell
from aml_model.train import EpochReport, train_model


@pytest.fixture(scope="module")
def cells():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 48)
    images = np.stack([render_cell(bool(label), rng, size=32) for label in labels])
    return images, labels


def test_training_reduces_the_loss(cells):
    images, labels = cells
    config = ExperimentConfig.tiny(image_size=32, epochs=6)
    keras.utils.set_random_seed(0)
    model = build_model(config.model)
    history, best_epoch = train_model(
        model, images[:72], labels[:72], images[72:], labels[72:], config.train
    )
    assert len(history["loss"]) >= 2
    assert min(history["loss"][1:]) < history["loss"][0]
    assert set(history) >= {"loss", "val_loss", "accuracy", "val_accuracy"}
    # Synthetic blasts and neutrophils are learnable: a later epoch beats the first on validation
    # loss, and the best epoch returned is the one with the lowest validation loss.
    assert best_epoch == int(np.argmin(history["val_loss"])) and best_epoch > 0
    assert history["val_loss"][best_epoch] < history["val_loss"][0]


def test_early_stopping_stops_and_restores_the_best_epoch(cells):
    images, labels = cells
    config = ExperimentConfig.tiny(image_size=32, epochs=30)
    train_cfg = config.train.__class__(epochs=30, batch_size=16, early_stopping_patience=2, seed=0)
    keras.utils.set_random_seed(0)
    model = build_model(config.model)
    # Validation labels are the opposite of the training rule: learning makes validation loss worse.
    history, best_epoch = train_model(
        model, images[:72], labels[:72], images[72:], 1 - labels[72:], train_cfg
    )
    epochs_run = len(history["val_loss"])
    assert epochs_run < 30
    assert epochs_run == best_epoch + 1 + 2, "stops exactly `patience` epochs after the best one"
    restored = model.evaluate(
        make_dataset(images[72:], 1 - labels[72:], batch_size=16), verbose=0, return_dict=True
    )
    assert restored["loss"] == pytest.approx(history["val_loss"][best_epoch], rel=1e-4)
    assert restored["loss"] != pytest.approx(history["val_loss"][-1], rel=1e-4)


def test_cell_batches_give_autograph_nothing_to_warn_about(cells):
    import logging

    from aml_model.augment import build_augmenter
    from aml_model.config import AugmentConfig
    from aml_model.train import cell_batches

    class Keep(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    messages, handler, logger = [], Keep(), logging.getLogger("tensorflow")
    logger.addHandler(handler)
    try:
        images, labels = cells
        for augmenter in (None, build_augmenter(AugmentConfig(), seed=0)):
            batches = list(cell_batches(images[:8], labels[:8], 4, seed=0, augmenter=augmenter))
            assert [tuple(x.shape) for x, _ in batches] == [(4, 32, 32, 3)] * 2
    finally:
        logger.removeHandler(handler)
    # "AutoGraph could not transform <function cell_batches.<locals>.<lambda>> ... do_not_convert"
    assert not [m for m in messages if "AutoGraph" in m or "do_not_convert" in m], messages


def test_epoch_report_hands_over_every_epoch_with_its_validation_auc(cells):
    images, labels = cells
    config = ExperimentConfig.tiny(image_size=32, epochs=3)
    keras.utils.set_random_seed(0)
    model = build_model(config.model)
    seen = []
    history, _ = train_model(
        model,
        images[:72],
        labels[:72],
        images[72:],
        labels[72:],
        config.train,
        callbacks=[EpochReport(lambda epoch, epochs, logs: seen.append((epoch, epochs, logs)))],
    )
    assert [(epoch, epochs) for epoch, epochs, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    assert [logs["val_loss"] for _, _, logs in seen] == pytest.approx(history["val_loss"])
    assert all(0.0 <= logs["val_auc"] <= 1.0 for _, _, logs in seen)
