"""The nightly retrain as deployed: its configuration is read from Prefect variables when a run starts.

``retrain-and-evaluate/nightly`` runs :func:`nightly_retrain`, a flow of the same name as
:func:`flows.retrain.retrain_and_evaluate` that reads the variables of :data:`NIGHTLY_VARIABLES`
(and any other parameter from the JSON object in ``aml_smear_retrain_options``), lets the run's
own parameters win over them, then runs the retrain in its own flow run. Changing a variable
changes the next run; nothing needs deploying again. Unless ``force`` is given, the run trains
nothing when the labelled data, code and configuration are the champion's (``skip_unchanged``).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from typing import Annotated, Any

from prefect import flow, get_run_logger
from pydantic import Field

from flows.logs import failing_with_reason
from flows.parameters import PartialRetrainOptions, RetrainOptions, nest_options
from flows.retrain import retrain_and_evaluate

__all__ = [
    "NIGHTLY_VARIABLES",
    "OPTIONS_VARIABLE",
    "nightly_parameters",
    "nightly_retrain",
    "read_nightly_variables",
]

# {retrain parameter: Prefect variable} read when a nightly run starts.
NIGHTLY_VARIABLES: Mapping[str, str] = {
    "store": "aml_smear_store",
    "sources": "aml_smear_retrain_sources",
    "s3_endpoint_url": "aml_smear_s3_endpoint_url",
    "backbone_weights": "aml_smear_backbone_weights",
    "backbone_weights_sha256": "aml_smear_backbone_weights_sha256",
    "recipe": "aml_smear_recipe",
    "epochs": "aml_smear_epochs",
    "image_size": "aml_smear_image_size",
}
# A JSON object of any other retrain parameter, e.g. {"augment_views": 1, "patience": 3}.
OPTIONS_VARIABLE = "aml_smear_retrain_options"
# The retrain's inputs besides its options; with the options' fields, the nightly's parameters by name.
_INPUTS = frozenset(inspect.signature(retrain_and_evaluate.fn).parameters) - {
    "options",
    "skip_unchanged",
}
RETRAIN_PARAMETERS = _INPUTS | frozenset(RetrainOptions.model_fields)


def _value(value: Any) -> Any:
    # A variable set to "" (or a deployment that templated an unset one) means "not set".
    return None if value == "" else value


def nightly_parameters(
    explicit: Mapping[str, Any], variables: Mapping[str, Any]
) -> tuple[dict, dict]:
    """The retrain parameters of one nightly run: run parameters over variables over the flow's defaults.

    Args:
        explicit: the run's own parameters; None means not given.
        variables: Prefect variable values by name (absent or None: not set).

    Returns:
        (parameters, origin): the parameters to run with (absent ones keep the flow's defaults),
        and where each came from ("run parameter" or "variable NAME").

    Raises:
        ValueError: the options variable is not a JSON object of retrain parameters, or there is
            no store or no source; the message says which variable to set.
    """
    options = _value(variables.get(OPTIONS_VARIABLE)) or {}
    if isinstance(options, str):
        options = json.loads(options)
    if not isinstance(options, dict) or not set(options) <= RETRAIN_PARAMETERS:
        unknown = (
            sorted(set(options) - RETRAIN_PARAMETERS) if isinstance(options, dict) else options
        )
        message = f"Prefect variable {OPTIONS_VARIABLE} must be a JSON object of retrain parameters; not {unknown!r}"
        raise ValueError(message)
    parameters = dict(options)
    origin = dict.fromkeys(options, f"variable {OPTIONS_VARIABLE}")
    for parameter, variable in NIGHTLY_VARIABLES.items():
        value = _value(variables.get(variable))
        if value is not None:
            parameters[parameter], origin[parameter] = value, f"variable {variable}"
    for parameter, value in explicit.items():
        if _value(value) is not None:
            parameters[parameter], origin[parameter] = value, "run parameter"
    if isinstance(parameters.get("sources"), str):  # one URL, or a JSON list given as text
        text = parameters["sources"]
        parameters["sources"] = json.loads(text) if text.lstrip().startswith("[") else [text]
    missing = [name for name in ("store", "sources") if not parameters.get(name)]
    if missing:
        examples = {"store": "/path/to/store", "sources": "'[\"/path/to/labelled\"]'"}
        commands = "; ".join(
            f"prefect variable set {NIGHTLY_VARIABLES[name]} {examples[name]} --overwrite"
            for name in missing
        )
        message = f"the nightly retrain has no {' and no '.join(missing)}: {commands}"
        raise ValueError(message)
    return parameters, origin


def read_nightly_variables() -> dict[str, Any]:
    """The nightly's Prefect variables that are set (needs a Prefect API)."""
    from prefect.variables import Variable

    names = [*NIGHTLY_VARIABLES.values(), OPTIONS_VARIABLE]
    return {name: value for name in names if (value := Variable.get(name)) is not None}


@flow(name="retrain-and-evaluate", validate_parameters=True)
def nightly_retrain(
    # The retrain flow's types, each optional: a given value is checked before the run starts.
    sources: Annotated[list[str], Field(min_length=1)] | None = None,
    store: str | None = None,
    options: PartialRetrainOptions | None = None,
    s3_endpoint_url: str | None = None,
    force: bool = False,
) -> dict:
    """Retrain with the configuration in the Prefect variables, read now; given parameters win.

    Every parameter is that of :func:`flows.retrain.retrain_and_evaluate`, and ``options`` may give
    some of its options only: a given one is checked before the run starts (a bad one never runs);
    unset ones come from the variables of NIGHTLY_VARIABLES and ``aml_smear_retrain_options``, then
    from that flow's defaults, checked when the run starts (a bad variable fails the run with its
    name, before anything is written). ``force`` trains even when nothing changed since the champion.

    Returns:
        retrain_and_evaluate's result (``skipped`` says whether it trained), plus ``configuration``:
        where each parameter came from.
    """
    given = options.model_dump(exclude_none=True) if options is not None else {}
    explicit = {"sources": sources, "store": store, "s3_endpoint_url": s3_endpoint_url, **given}
    # A failure's state message is its one-line reason: what the failure alert and `--watch` show.
    return failing_with_reason(_nightly, explicit, force)


def _nightly(explicit: dict[str, Any], force: bool) -> dict:
    """nightly_retrain's body: ``explicit`` is the run's own parameters (None: not given)."""
    parameters, origin = nightly_parameters(explicit, read_nightly_variables())
    logger = get_run_logger()
    for name in sorted(parameters):
        logger.info("%s = %s (%s)", name, json.dumps(parameters[name]), origin[name])
    # The retrain flow's own types, choices and bounds; a bad variable fails the run here, with its name.
    checked = retrain_and_evaluate.validate_parameters(
        {**nest_options(parameters, RetrainOptions), "skip_unchanged": not force}
    )
    # Its body in this flow run: one run, on this flow's task runner, timeout and retries.
    result = retrain_and_evaluate.fn(**checked)
    return {**result, "configuration": origin}
