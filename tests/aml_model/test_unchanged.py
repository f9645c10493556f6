"""unchanged_since_champion: training is skipped only when data, code and configuration are all known and equal."""

from __future__ import annotations

import copy

import pytest

from aml_model.promotion import unchanged_since_champion

CODE = {"package": "0.1.0", "commit": "a" * 40, "dirty": False}
SETTINGS = {
    "config": {
        "model": {"image_size": 32, "backbone_weights": "/w.h5"},
        "train": {"epochs": 2},
        "threshold": 0.5,
        "augment": (20, 0.2),
    },
    "recipe": "paper",
    "training_path": "cached",
    "augment_views": 1,
}
CARD = {
    "version": "20261130T020000Z-abcd1234",
    "data": {"sha256": "d" * 64},
    "code_version": CODE,
    # As read back from JSON: tuples are lists.
    **{**SETTINGS, "config": {**SETTINGS["config"], "augment": [20, 0.2]}},
}


def test_nothing_changed_names_the_champion_data_and_commit():
    reason = unchanged_since_champion(CARD, "d" * 64, CODE, SETTINGS)
    assert reason.startswith("nothing changed since champion 20261130T020000Z-abcd1234")
    assert "d" * 12 in reason and "a" * 12 in reason


def _changed(path: tuple, value):
    card = copy.deepcopy(CARD)
    target = card
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return card


@pytest.mark.parametrize(
    "card",
    [
        None,  # no champion: train the first
        _changed(("data", "sha256"), "e" * 64),  # other images or labels
        _changed(("code_version", "commit"), "b" * 40),  # other code
        _changed(("code_version", "dirty"), True),  # the champion's code had uncommitted changes
        _changed(("code_version", "commit"), None),  # no git: the code cannot be compared
        _changed(("config", "train", "epochs"), 3),  # another configuration
        _changed(("config", "model", "backbone_weights"), "/other.h5"),
        _changed(("recipe",), "robust"),
        _changed(("augment_views",), 2),
        _changed(("code_version",), "0.1.0"),  # a card of before code_version was a record
    ],
    ids=[
        "no-champion",
        "data",
        "commit",
        "dirty-card",
        "no-git",
        "epochs",
        "weights",
        "recipe",
        "views",
        "old-card",
    ],
)
def test_any_difference_or_unknown_trains(card):
    assert unchanged_since_champion(card, "d" * 64, CODE, SETTINGS) is None


def test_this_code_dirty_or_without_git_trains():
    assert unchanged_since_champion(CARD, "d" * 64, {**CODE, "dirty": True}, SETTINGS) is None
    assert (
        unchanged_since_champion(CARD, "d" * 64, {**CODE, "commit": None, "dirty": None}, SETTINGS)
        is None
    )
    assert (
        unchanged_since_champion(CARD, "d" * 64, CODE, {**SETTINGS, "training_path": "plain"})
        is None
    )
