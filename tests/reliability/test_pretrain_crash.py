"""A pretraining whose process, cluster and all, is SIGKILLed mid-run resumes from its checkpoint."""

from __future__ import annotations

import json
import subprocess

import pytest

from aml_model.pretrain import PretrainState
from tests.conftest import PROJECT_ROOT
from tests.reliability.conftest import PYTHON, kill_group, start_python, wait_for

pytestmark = pytest.mark.reliability

STEPS = 60
CLI_PROCESS = "import sys; from app.cli import main; sys.argv[0] = 'aml-smear'; main()"


def _checkpoint(store) -> PretrainState | None:
    found = list((store / "backbones" / "_pretraining").glob("*/state.npz"))
    return PretrainState.from_bytes(found[0].read_bytes()) if found else None


def test_a_killed_pretraining_resumes_from_its_checkpoint_and_finishes_with_the_same_steps(
    training_cohort, tmp_path
):
    store = tmp_path / "store"
    args = [
        "pretrain-backbone",
        str(training_cohort),
        "--store",
        str(store),
        "--steps",
        str(STEPS),
        "--steps-per-task",
        str(STEPS),
        "--batch-size",
        "4",
        "--view-size",
        "32",
        "--image-size",
        "32",
        "--checkpoint-every",
        "4",
        "--workers",
        "1",
    ]
    log = tmp_path / "pretrain.log"
    # Its own local cluster: killing the process group kills the worker that trains, too.
    process = start_python(CLI_PROCESS, *args, log=log)
    try:
        wait_for(
            lambda: (
                (store / "backbones" / "_pretraining").exists()
                and _checkpoint(store) is not None
                or process.poll() is not None
            ),
            300,
            "the first checkpoint",
        )
    finally:
        kill_group(process)
    assert process.returncode == -9, (
        f"the pretraining ended before it was killed:\n{log.read_text()[-3000:]}"
    )
    killed_at = _checkpoint(store).step
    assert 0 < killed_at < STEPS
    assert not [p for p in (store / "backbones").iterdir() if not p.name.startswith("_")], (
        "nothing registered"
    )

    resumed = subprocess.run(
        [PYTHON, "-c", CLI_PROCESS, *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    final = _checkpoint(store)
    assert final.step == STEPS and len(final.losses) == STEPS
    assert f"resumed at step {killed_at}" in resumed.stdout
    (card_file,) = [
        p / "card.json" for p in (store / "backbones").iterdir() if not p.name.startswith("_")
    ]
    card = json.loads(card_file.read_text())
    assert card["steps"] == STEPS and card["id"] in resumed.stdout
