"""One source of defaults: every CLI option that sets a flow parameter has the flow's default, and so
does every deployment parameter that a deployment does not fix on purpose."""

from __future__ import annotations

import inspect

import click
import pytest
from pydantic import BaseModel

from flows.calibrate import calibrate_site
from flows.cli import cli
from flows.demo import demo_flow
from flows.ingest import ingest
from flows.pretrain import pretrain_backbone
from flows.retrain import retrain_and_evaluate
from flows.score import score_smears
from flows.serve import DEPLOYMENTS, dask_runner_from_environment, deployed_flow, deployment_options

COMMANDS = {"score": score_smears, "ingest": ingest, "retrain": retrain_and_evaluate, "calibrate": calibrate_site,
            "demo": demo_flow, "pretrain-backbone": pretrain_backbone}
# Options of the runner, not parameters of a flow.
RUNNER_OPTIONS = {"workers", "scheduler"}


def _flow_defaults(flow) -> dict:
    """The flow's parameters' defaults, a typed options object's as a dict."""
    return {name: p.default.model_dump() if isinstance(p.default, BaseModel) else p.default
            for name, p in inspect.signature(flow.fn).parameters.items() if p.default is not inspect.Parameter.empty}


def _parameter_defaults(flow) -> dict:
    """Every default by parameter name, the options' fields by their own names (as the CLI names them)."""
    defaults = _flow_defaults(flow)
    return {**defaults, **defaults.pop("options", {})}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_cli_defaults_are_the_flows(command):
    flow = COMMANDS[command]
    defaults = _parameter_defaults(flow)
    parameters = {*inspect.signature(flow.fn).parameters, *defaults}
    ctx = click.Context(cli.commands[command])
    checked = 0
    for option in cli.commands[command].params:
        if option.name in RUNNER_OPTIONS or (command == "demo" and option.name == "s3_endpoint_url"):
            continue
        assert option.name in parameters, f"aml-smear {command} --{option.name} sets no parameter of {flow.name}"
        if option.name in defaults:
            assert option.get_default(ctx) == defaults[option.name], (
                f"aml-smear {command}: --{option.name} defaults to {option.get_default(ctx)!r}, "
                f"flow {flow.name} to {defaults[option.name]!r}")
            checked += 1
    # Every field of a flow's typed options is a CLI option, but the chunking of score's new runs.
    options = set(_flow_defaults(flow).get("options", {})) - {"chunk_cells", "chunks_per_task"}
    assert options <= {option.name for option in cli.commands[command].params}
    assert checked >= 1


@pytest.mark.parametrize("spec", DEPLOYMENTS, ids=lambda spec: spec.full_name)
def test_deployment_parameter_defaults_are_the_flows(spec):
    runner = dask_runner_from_environment({"AML_SMEAR_DASK_WORKERS": "1"})
    flow = deployed_flow(spec, runner)
    deployment = flow.to_deployment(**deployment_options(spec, {}))
    schema = deployment._parameter_openapi_schema.model_dump()["properties"]
    defaults = _flow_defaults(flow)
    for name, default in defaults.items():
        assert schema[name].get("default") == default, f"{spec.full_name}: {name}"
    # What a deployment fixes on purpose differs from the flow, and says so in its spec.
    assert set(deployment.parameters) == set(spec.parameters)
    assert all(deployment.parameters[name] == value for name, value in spec.parameters.items())
