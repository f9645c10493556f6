"""pretrain-backbone on real cells: registration (card last), idempotent reruns, a tampered file refused,
and a retrain on the registered backbone naming it in its model card."""

import json

import pytest
from prefect.task_runners import ThreadPoolTaskRunner

from aml_model.errors import BackboneWeightsError, WeightsHashMismatchError
from aml_model.pretrain import PretrainState
from flows.parameters import PretrainOptions, RetrainOptions, nest_options
from flows.pretrain import pretrain_backbone
from flows.retrain import retrain_and_evaluate
from tasks import pretrain as pretrain_tasks
from tasks.backbones import BACKBONE_CARD, BACKBONE_WEIGHTS, resolve_backbone
from tasks.store import Store
from tests.corpus import compose_patient_cohort

TINY = dict(
    steps=6, steps_per_task=4, batch_size=4, view_size=32, image_size=48, checkpoint_every=2
)


def run_pretrain(task_runner, **parameters):
    return pretrain_backbone.with_options(task_runner=task_runner)(
        **nest_options({"sources": [], **TINY, **parameters}, PretrainOptions)
    )


@pytest.fixture(scope="module")
def cohort(lmu_cells, tmp_path_factory):
    plan = {f"P{i:02d}": ((8, 4) if i % 2 else (2, 10)) for i in range(10)}
    return compose_patient_cohort(lmu_cells, tmp_path_factory.mktemp("cohort") / "cohort", plan)


def test_a_pretrained_backbone_is_registered_card_last_and_a_retrain_on_it_names_it(
    cohort, tmp_path, task_runner, monkeypatch
):
    store = tmp_path / "store"
    # The registration stops after the weights, before the card: the folder must not resolve.
    real_write_json = Store.write_json

    def no_card(self, url, payload):
        if url.endswith(BACKBONE_CARD):
            raise OSError("disk full")
        return real_write_json(self, url, payload)

    monkeypatch.setattr(Store, "write_json", no_card)
    with pytest.raises(
        OSError, match="disk full"
    ):  # tasks in this process, where the fault is planted
        run_pretrain(ThreadPoolTaskRunner(max_workers=1), sources=[str(cohort)], store=str(store))
    monkeypatch.setattr(Store, "write_json", real_write_json)
    (half,) = [p for p in (store / "backbones").iterdir() if not p.name.startswith("_")]
    assert (half / BACKBONE_WEIGHTS).exists() and not (half / BACKBONE_CARD).exists()
    with pytest.raises(BackboneWeightsError, match="not completely registered"):
        resolve_backbone(half.name, Store(str(store)))
    (work,) = (store / "backbones" / "_pretraining").iterdir()
    assert PretrainState.from_bytes((work / "state.npz").read_bytes()).step == TINY["steps"]

    # Run again: training is done, so it only registers (the same weights, the same id).
    result = run_pretrain(task_runner, sources=[str(cohort)], store=str(store))
    assert result["resumed_from"] == TINY["steps"] and result["backbone_id"] == half.name
    card = json.loads((half / BACKBONE_CARD).read_text())
    assert card["steps"] == TINY["steps"] and card["cells"] == result["cells"] == 120
    assert (
        card["method"] == "simclr"
        and card["recipe"] == "robust"
        and card["layers_up_to"] == "conv3_block4_out"
    )
    assert card["sources"] == [str(cohort)] and card["parent"] is None
    assert card["augmentation"]["stain_transfer"] == 0.8 and card["pretrain"]["view_size"] == 32
    assert card["cell_types"] == {"unknown": 120} and len(card["code_version"]["package"]) > 0
    assert card["id"] == f"cells-{work.name[:12]}" and card["train_seconds"] > 0
    again = run_pretrain(task_runner, sources=[str(cohort)], store=str(store))
    assert again["already_complete"] and again["backbone_id"] == half.name

    retrain = dict(epochs=3, patience=2, image_size=48, augment_views=0, backbone_weights=half.name)
    trained = retrain_and_evaluate.with_options(task_runner=task_runner)(
        **nest_options({"sources": [str(cohort)], "store": str(store), **retrain}, RetrainOptions)
    )
    model_card = json.loads((store / "models" / trained["version"] / "model_card.json").read_text())
    assert model_card["config"]["model"]["backbone_weights"] == half.name
    assert model_card["backbone"]["registered"]["id"] == half.name
    assert model_card["backbone"]["registered"]["sha256"] == card["sha256"]

    # A changed weights file is refused by its card's sha256, before anything trains.
    data = bytearray((half / BACKBONE_WEIGHTS).read_bytes())
    data[-64] ^= 0xFF
    (half / BACKBONE_WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(WeightsHashMismatchError, match=f"expected {card['sha256']}"):
        retrain_and_evaluate.with_options(task_runner=task_runner)(
            **nest_options(
                {"sources": [str(cohort)], "store": str(store), **retrain, "seed": 1},
                RetrainOptions,
            )
        )


def test_site_pretraining_continues_from_a_registered_backbone_on_the_stores_runs(
    cohort, tmp_path, task_runner
):
    store = tmp_path / "store"
    first = run_pretrain(
        task_runner, sources=[str(cohort)], store=str(store), steps=4, steps_per_task=4
    )
    (run,) = [p.name for p in (store / "runs").iterdir()]
    site = run_pretrain(
        task_runner,
        runs=[run],
        store=str(store),
        start_from=first["backbone_id"],
        name="site-a",
        steps=4,
        steps_per_task=4,
    )
    card = site["card"]
    assert (
        site["backbone_id"].startswith("site-a-")
        and card["runs"] == [run]
        and card["sources"] == []
    )
    assert card["parent"] == {"id": first["backbone_id"], "sha256": first["card"]["sha256"]}
    assert site["backbone_id"] != first["backbone_id"]


def test_pretraining_needs_cells_and_complete_runs(tmp_path, task_runner):
    with pytest.raises(ValueError, match="needs cells"):
        run_pretrain(task_runner, store=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="run nope is not a complete ingest run"):
        run_pretrain(task_runner, runs=["nope"], store=str(tmp_path))
    with pytest.raises(ValueError, match="give its sha256"):
        run_pretrain(
            task_runner, runs=["nope"], store=str(tmp_path), start_from=str(tmp_path / "w.h5")
        )


def test_a_pretraining_is_named_by_its_cells_settings_and_start_whatever_their_order():
    """The work key names the cells by hash, sorted: the same cells from another ingest order
    resume the same pretraining."""
    from aml_model.config import AugmentConfig, ModelConfig, PretrainConfig

    model, augment, config = ModelConfig(), AugmentConfig(), PretrainConfig()
    hashes = [f"{i:064x}" for i in range(5)]
    key = pretrain_tasks.pretraining_key(hashes, model, augment, config, None)
    assert key == pretrain_tasks.pretraining_key(
        list(reversed(hashes)), model, augment, config, None
    )
    assert key != pretrain_tasks.pretraining_key(hashes[:4], model, augment, config, None)
    assert key != pretrain_tasks.pretraining_key(hashes, model, augment, config, "ab" * 32)
    # The start is named by its sha256, not by how the model config spells it.
    assert key == pretrain_tasks.pretraining_key(
        hashes, ModelConfig(backbone_weights="none"), augment, config, None
    )
