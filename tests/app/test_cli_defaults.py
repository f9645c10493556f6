"""One source of defaults: every CLI option that sets a flow parameter has the flow's default, and so
does every deployment parameter that a deployment does not fix on purpose. A CLI option's bounds are
its parameter's, and its environment variable is one tasks.settings parses, with the same bounds."""

from __future__ import annotations

import inspect
import types
import typing

import click
import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from app.cli import cli
from app.serve import DEPLOYMENTS, dask_runner_from_environment, deployed_flow, deployment_options
from flows.calibrate import calibrate_site
from flows.demo import demo_flow
from flows.ingest import ingest
from flows.pretrain import pretrain_backbone
from flows.retrain import retrain_and_evaluate
from flows.score import score_smears

COMMANDS = {
    "score": score_smears,
    "ingest": ingest,
    "retrain": retrain_and_evaluate,
    "calibrate": calibrate_site,
    "demo": demo_flow,
    "pretrain-backbone": pretrain_backbone,
}
# Options of the runner, not parameters of a flow.
RUNNER_OPTIONS = {"workers", "scheduler"}


def _flow_defaults(flow) -> dict:
    """The flow's parameters' defaults, a typed options object's as a dict."""
    return {
        name: p.default.model_dump() if isinstance(p.default, BaseModel) else p.default
        for name, p in inspect.signature(flow.fn).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


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
        if option.name in RUNNER_OPTIONS or (
            command == "demo" and option.name == "s3_endpoint_url"
        ):
            continue
        assert option.name in parameters, (
            f"aml-smear {command} --{option.name} sets no parameter of {flow.name}"
        )
        if option.name in defaults:
            assert option.get_default(ctx) == defaults[option.name], (
                f"aml-smear {command}: --{option.name} defaults to {option.get_default(ctx)!r}, "
                f"flow {flow.name} to {defaults[option.name]!r}"
            )
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


def _bounds(annotation, metadata=()) -> dict:
    """ge/gt/le/lt of a pydantic type (Annotated, optional or not), as click ranges hold them."""
    found, todo = {}, [annotation, *metadata]
    while todo:
        item = todo.pop()
        if typing.get_origin(item) in (typing.Annotated, typing.Union, types.UnionType):
            todo += typing.get_args(item)
        elif isinstance(item, FieldInfo):
            todo += item.metadata
        else:
            found |= {
                key: getattr(item, key)
                for key in ("ge", "gt", "le", "lt")
                if getattr(item, key, None) is not None
            }
    return found


def _click_bounds(kind: click.types._NumberRangeBase) -> dict:
    low = {} if kind.min is None else {"gt" if kind.min_open else "ge": kind.min}
    return low | ({} if kind.max is None else {"lt" if kind.max_open else "le": kind.max})


def _commands(command: click.Command, path: str = "aml-smear"):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, f"{path} {name}")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_cli_bounds_are_the_flows(command):
    flow = COMMANDS[command]
    hints = typing.get_type_hints(flow.fn, include_extras=True)
    options = hints.get("options")
    for option in cli.commands[command].params:
        if (
            not isinstance(option.type, click.types._NumberRangeBase)
            or option.name in RUNNER_OPTIONS
        ):
            continue
        if option.name in hints:
            expected = _bounds(hints[option.name])
        else:
            info = options.model_fields[option.name]
            expected = _bounds(info.annotation, info.metadata)
        assert _click_bounds(option.type) == expected, f"aml-smear {command} --{option.name}"


def test_cli_environment_variables_are_settings_with_their_bounds():
    from tasks.settings import SETTINGS, variable

    fields = {variable(name): info for cls in SETTINGS for name, info in cls.model_fields.items()}
    seen = set()
    for path, command in _commands(cli):
        for option in command.params:
            names = [option.envvar] if isinstance(option.envvar, str) else list(option.envvar or ())
            for name in names:
                assert name in fields, (
                    f"{path} --{option.name}: {name} is not parsed by tasks.settings"
                )
                seen.add(name)
                if isinstance(option.type, click.types._NumberRangeBase):
                    info = fields[name]
                    assert _click_bounds(option.type) == _bounds(info.annotation, info.metadata), (
                        f"{path} {name}"
                    )
    assert {"AML_SMEAR_DEBUG", "AML_SMEAR_S3_ENDPOINT_URL", "AML_SMEAR_DASK_WORKERS"} <= seen
