"""Every flow checks its parameters before it writes anything (issue 15).

A rerun of a finished scoring run with one wrong value (``precision="fp16"``) used to remove the
run's ``_SUCCESS`` and rewrite ``cells.parquet`` before it failed. Each invalid parameter of each
flow must now fail the flow run at once, its state message naming the parameter (and the values a
choice allows), with every file of the store unchanged, byte for byte.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from prefect import get_client
from prefect.client.schemas.objects import StateType

from aml_model.config import RECIPES
from flows.calibrate import calibrate_site
from flows.demo import demo_flow
from flows.ingest import ingest
from flows.parameters import RetrainOptions, ScoreOptions, nest_options
from flows.retrain import retrain_and_evaluate
from flows.score import score_smears
from tasks.discover import LAYOUTS
from tests.corpus import compose_patient_cohort

PRECISIONS = "'auto', 'float32', 'bfloat16' or 'float16'"
LAYOUT_CHOICES = "'auto', 'patient', 'class' or 'manifest'"


def _case_id(value) -> str | None:
    return ",".join(value) if isinstance(value, dict) else None


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def recorded_state(state):
    """The flow run's final state as the Prefect API holds it (what the UI and `prefect flow-run inspect` show)."""
    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id).state


@pytest.fixture(scope="module")
def scored(lmu_cells, tiny_model_file, dask_cluster, tmp_path_factory):
    """A finished scoring run: (source, store, model, the parameters it was scored with)."""
    from prefect_dask import DaskTaskRunner

    root = tmp_path_factory.mktemp("parameters")
    source = compose_patient_cohort(lmu_cells, root / "smears", {"A": (3, 3), "B": (1, 5)})
    store = root / "store"
    parameters = {
        "source": str(source),
        "store": str(store),
        "model": str(tiny_model_file),
        "min_cells": 5,
        "chunk_cells": 4,
    }
    runner = DaskTaskRunner(address=dask_cluster.scheduler_address)
    result = score_smears.with_options(task_runner=runner)(**nest_options(parameters, ScoreOptions))
    assert not result["already_complete"]
    assert (store / "runs" / result["run_id"] / "_SUCCESS").exists()
    return source, store, tiny_model_file, parameters


def test_choices_are_the_librarys():
    from aml_model.calibration import DEFAULT_OPERATING_POINT, OPERATING_POINTS
    from aml_model.inference import INFERENCE_PRECISIONS
    from app.cli import cli
    from flows.parameters import ScoreOptions

    def choices(flow, name):
        hints = typing.get_type_hints(flow.fn, include_extras=True)
        if name not in hints:  # a field of the flow's typed options
            hints = typing.get_type_hints(hints["options"], include_extras=True)
        return typing.get_args(hints[name])

    assert choices(score_smears, "precision") == ("auto", *INFERENCE_PRECISIONS)
    assert choices(score_smears, "site_operating_point") == OPERATING_POINTS
    assert ScoreOptions().site_operating_point == DEFAULT_OPERATING_POINT
    assert choices(retrain_and_evaluate, "recipe") == RECIPES
    assert choices(retrain_and_evaluate, "training_path") == ("cached", "plain")
    for flow in (score_smears, ingest, calibrate_site, retrain_and_evaluate):
        assert choices(flow, "layout") == LAYOUTS, flow.name

    def cli_choices(command, name):
        (option,) = [p for p in cli.commands[command].params if p.name == name]
        return tuple(option.type.choices)

    assert cli_choices("score", "precision") == ("auto", *INFERENCE_PRECISIONS)
    assert cli_choices("score", "site_operating_point") == OPERATING_POINTS
    assert cli_choices("retrain", "recipe") == RECIPES
    assert cli_choices("retrain", "training_path") == ("cached", "plain")
    assert cli_choices("ingest", "layout") == LAYOUTS


def test_every_option_has_its_configuration_fields_type():
    """A bound is stated once, in aml_model.config: each option of the flows has the type (bounds,
    choices) of the configuration field it sets, and flows/parameters.py states none of its own."""
    from aml_model.config import (
        ExperimentConfig,
        ModelConfig,
        PretrainConfig,
        RetrainConfig,
        ScoringConfig,
        SummaryConfig,
        TrainConfig,
    )
    from flows.parameters import PretrainOptions

    sources = {
        ScoreOptions: (SummaryConfig, ScoringConfig),
        RetrainOptions: (TrainConfig, ModelConfig, RetrainConfig, ExperimentConfig),
        PretrainOptions: (PretrainConfig, ModelConfig, ExperimentConfig),
    }
    renamed = {
        "patience": "early_stopping_patience",
        "start_from": "backbone_weights",
        "start_from_sha256": "backbone_weights_sha256",
    }
    checked = set()
    for options, configs in sources.items():
        for name, info in options.model_fields.items():
            field = next(
                (
                    config.__pydantic_fields__[renamed.get(name, name)]
                    for config in configs
                    if renamed.get(name, name) in config.__pydantic_fields__
                ),
                None,
            )
            if field is not None:
                assert (info.annotation, info.metadata) == (field.annotation, field.metadata), (
                    f"{options.__name__}.{name}"
                )
                checked.add(name)
    assert {
        "threshold",
        "min_cells",
        "batch_size",
        "image_size",
        "seed",
        "backbone_weights_sha256",
        "augment_views",
        "promotion_margin",
        "min_crop",
        "blur",
        "precision",
        "training_path",
        "recipe",
    } <= checked
    source = (Path(__file__).resolve().parents[2] / "flows" / "parameters.py").read_text()
    assert not re.findall(r"\b(?:ge|gt|le|lt)=", source), "state bounds in aml_model.config"


def test_a_typo_in_a_rerun_leaves_the_finished_run_untouched(scored, task_runner):
    # The case: the same run again, through the same Dask cluster, with precision="fp16".
    _, store, _, parameters = scored
    before = snapshot(store)
    state = score_smears.with_options(task_runner=task_runner)(
        **nest_options({**parameters, "precision": "fp16"}, ScoreOptions), return_state=True
    )
    assert state.is_failed()
    changed = sorted(
        name
        for name in before.keys() | snapshot(store).keys()
        if before.get(name) != snapshot(store).get(name)
    )
    assert not changed, f"the rejected rerun changed the finished run: {changed}"
    assert f"precision: Input should be {PRECISIONS}" in state.message
    recorded = recorded_state(state)
    assert recorded.type == StateType.FAILED and recorded.message == state.message


SCORE_CASES = [
    ({"precision": "fp16"}, [f"precision: Input should be {PRECISIONS}"]),
    ({"layout": "grid"}, [f"layout: Input should be {LAYOUT_CHOICES}"]),
    ({"threshold": 1.5}, ["threshold: Input should be less than 1"]),
    ({"threshold": 0}, ["threshold: Input should be greater than 0"]),
    ({"blast_cutoff": 0.0}, ["blast_cutoff: Input should be greater than 0"]),
    ({"min_cells": 0}, ["min_cells: Input should be greater than or equal to 1"]),
    (
        {"max_quarantined_share": 1.5},
        ["max_quarantined_share: Input should be less than or equal to 1"],
    ),
    ({"batch_size": 0}, ["batch_size: Input should be greater than or equal to 1"]),
    ({"chunk_cells": 0}, ["chunk_cells: Input should be greater than or equal to 1"]),
    ({"chunks_per_task": 0}, ["chunks_per_task: Input should be greater than or equal to 1"]),
    ({"explain_top_k": 0}, ["explain_top_k: Input should be greater than or equal to 1"]),
    ({"explain": "maybe"}, ["explain: Input should be a valid boolean"]),
    ({"run_id": "../elsewhere"}, ["run_id: String should match pattern"]),
    ({"site": "lab a"}, ["site: String should match pattern"]),
    (
        {"site": "lab-a", "site_operating_point": "youden"},
        ["site_operating_point: Input should be 'fraction' or 'balanced'"],
    ),
    ({"site": "lab-a", "threshold": 0.6}, ["threshold=0.6 and site='lab-a' both given"]),
    ({"site": "lab-z"}, ["site lab-z has no calibration for model"]),
    ({"model": "MISSING/model.keras"}, ["model 'MISSING/model.keras' is neither"]),
    ({"source": "MISSING"}, ["source MISSING does not exist"]),
]


@pytest.mark.parametrize(("overrides", "expected"), SCORE_CASES, ids=_case_id)
def test_every_invalid_scoring_parameter_fails_before_any_write(
    scored, tmp_path, overrides, expected
):
    _, store, _, parameters = scored
    _assert_refused(
        score_smears,
        {**parameters, **_resolve(overrides, tmp_path)},
        _resolve(expected, tmp_path),
        store,
    )


def _resolve(value, tmp_path):
    """MISSING in a case stands for a path that does not exist."""
    missing = str(tmp_path / "missing")
    if isinstance(value, dict):
        return {
            k: v.replace("MISSING", missing) if isinstance(v, str) else v for k, v in value.items()
        }
    return [v.replace("MISSING", missing) for v in value]


def _assert_refused(flow, parameters: dict, expected: list[str], store: Path) -> None:
    before = snapshot(store)
    options = {score_smears: ScoreOptions, retrain_and_evaluate: RetrainOptions}.get(flow)
    state = flow(
        **(nest_options(parameters, options) if options else parameters), return_state=True
    )
    assert state.is_failed(), state
    assert snapshot(store) == before, "a rejected parameter changed the store"
    for text in expected:
        assert text in state.message, state.message
    recorded = recorded_state(state)
    assert recorded.type == StateType.FAILED and recorded.message == state.message


INGEST_CASES = [
    ({"layout": "grid"}, [f"layout: Input should be {LAYOUT_CHOICES}"]),
    ({"image_size": 8}, ["image_size: Input should be greater than or equal to 32"]),
    ({"chunk_cells": 0}, ["chunk_cells: Input should be greater than or equal to 1"]),
    ({"chunks_per_task": -1}, ["chunks_per_task: Input should be greater than or equal to 1"]),
    ({"run_id": "a/b"}, ["run_id: String should match pattern"]),
    ({"source": "MISSING"}, ["source MISSING does not exist"]),
    ({"manifest_root": "MISSING"}, ["manifest_root MISSING does not exist"]),
]


@pytest.mark.parametrize(("overrides", "expected"), INGEST_CASES, ids=_case_id)
def test_every_invalid_ingest_parameter_fails_before_any_write(
    scored, tmp_path, overrides, expected
):
    source, store, _, _ = scored
    parameters = {"source": str(source), "store": str(store), "image_size": 32}
    _assert_refused(
        ingest, {**parameters, **_resolve(overrides, tmp_path)}, _resolve(expected, tmp_path), store
    )


RETRAIN_CASES = [
    ({"sources": []}, ["sources: List should have at least 1 item"]),
    # The first source exists: nothing of it may be ingested before the second is found missing.
    ({"sources": ["SOURCE", "MISSING"]}, ["source MISSING does not exist"]),
    ({"epochs": 0}, ["epochs: Input should be greater than or equal to 1"]),
    ({"patience": -1}, ["patience: Input should be greater than or equal to 0"]),
    ({"seed": -1}, ["seed: Input should be greater than or equal to 0"]),
    ({"image_size": 16}, ["image_size: Input should be greater than or equal to 32"]),
    ({"augment_views": -1}, ["augment_views: Input should be greater than or equal to 0"]),
    ({"promotion_margin": 1.5}, ["promotion_margin: Input should be less than or equal to 1"]),
    ({"training_path": "fast"}, ["training_path: Input should be 'cached' or 'plain'"]),
    ({"recipe": "fancy"}, ["recipe: Input should be 'paper' or 'robust'"]),
    ({"layout": "grid"}, [f"layout: Input should be {LAYOUT_CHOICES}"]),
    (
        {"backbone_weights": "MISSING.weights.h5"},
        ["backbone_weights MISSING.weights.h5 does not exist"],
    ),
    ({"backbone_weights_sha256": "abc"}, ["backbone_weights_sha256: String should match pattern"]),
]


@pytest.mark.parametrize(("overrides", "expected"), RETRAIN_CASES, ids=_case_id)
def test_every_invalid_retraining_parameter_fails_before_any_write(
    scored, tmp_path, overrides, expected
):
    source, store, _, _ = scored
    parameters = {
        "sources": [str(source)],
        "store": str(store),
        "epochs": 1,
        "backbone_weights": "none",
        "image_size": 32,
    }
    overrides = _resolve(overrides, tmp_path)
    if "sources" in overrides:
        overrides["sources"] = [
            str(source) if s == "SOURCE" else s.replace("MISSING", str(tmp_path / "missing"))
            for s in overrides["sources"]
        ]
    _assert_refused(
        retrain_and_evaluate, {**parameters, **overrides}, _resolve(expected, tmp_path), store
    )


CALIBRATE_CASES = [
    ({"site": "lab/a"}, ["site: String should match pattern"]),
    ({"layout": "grid"}, [f"layout: Input should be {LAYOUT_CHOICES}"]),
    ({"source": "MISSING"}, ["source MISSING does not exist"]),
    ({"model": "champion"}, ["no champion model in"]),
    ({"model": "MODEL"}, ["is a bare .keras file"]),
    ({"blast_cutoff": 1.5}, ["blast_cutoff: Input should be less than 1"]),
]


@pytest.mark.parametrize(("overrides", "expected"), CALIBRATE_CASES, ids=_case_id)
def test_every_invalid_calibration_parameter_fails_before_any_write(
    scored, tmp_path, overrides, expected
):
    source, store, model, _ = scored
    parameters = {"source": str(source), "store": str(store), "site": "lab-a", "model": str(model)}
    overrides = {
        k: str(model) if v == "MODEL" else v for k, v in _resolve(overrides, tmp_path).items()
    }
    _assert_refused(
        calibrate_site, {**parameters, **overrides}, _resolve(expected, tmp_path), store
    )


@pytest.mark.parametrize(
    "overrides", [{"epochs": 0}, {"cells_per_patient": 0}], ids=["epochs", "cells_per_patient"]
)
def test_invalid_demo_parameters_fail_before_any_write(tmp_path, overrides):
    state = demo_flow(store=str(tmp_path / "demo"), **overrides, return_state=True)
    assert state.is_failed()
    assert f"{next(iter(overrides))}: Input should be greater than or equal to 1" in state.message
    assert not (tmp_path / "demo").exists()


def test_a_failure_in_the_flow_is_its_state_message_on_one_line(scored, tmp_path):
    # What `prefect flow-run inspect`, the UI and `--watch` show: the reason, one line.
    _, store, _, parameters = scored
    missing = tmp_path / "missing"
    state = score_smears(
        **nest_options({**parameters, "source": str(missing)}, ScoreOptions), return_state=True
    )
    assert recorded_state(state).message == f"source {missing} does not exist"
    with pytest.raises(
        FileNotFoundError, match="does not exist"
    ):  # called directly, the flow raises it
        state.result()


def test_sources_are_checked_on_s3_too(s3_bucket, s3_endpoint):
    import s3fs

    from flows.parameters import require_existing
    from tasks.store import Store

    bucket, options = s3_bucket
    s3fs.S3FileSystem(**options).pipe_file(f"{bucket}/smears/A/cell.png", b"\x89PNG")
    require_existing(
        [Store.at(f"s3://{bucket}/{key}", s3_endpoint) for key in ("smears", "smears/A/cell.png")],
        "source",
    )
    with pytest.raises(FileNotFoundError, match=f"^source s3://{bucket}/nothing does not exist$"):
        require_existing(
            [Store.at(f"s3://{bucket}/{key}", s3_endpoint) for key in ("smears", "nothing")],
            "source",
        )
