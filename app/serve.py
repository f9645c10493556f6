"""The production deployments, declared once in ``deployments/prefect.yaml``: ``prefect deploy``
registers them for a work pool, and ``aml-smear serve`` serves the same declarations from here
(:func:`load_deployments`), with the flow-run settings that a prefect.yaml cannot hold
(:data:`RUN_SETTINGS`: timeout, retries, failure alert), which the entrypoints carry too.
Deployed flows run on the Dask task runner that
:func:`dask_runner_from_environment` builds from the environment of their flow-run process, served
flows on the one ``aml-smear serve`` is given (its options default to the same variables), so a GPU
cluster or a bigger machine needs a setting, not a code edit.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from prefect import Flow
from prefect_dask import DaskTaskRunner

from flows.runner import dask_task_runner
from tasks.settings import DaskSettings, variable

__all__ = [
    "DASK_SCHEDULER_ENV",
    "DASK_WORKERS_ENV",
    "DEPLOYMENTS",
    "NIGHTLY_RETRAIN",
    "OPTIONAL_VARIABLES",
    "RUN_SETTINGS",
    "SCORE_NEW_ARRIVALS",
    "SCORE_ON_DEMAND",
    "VARIABLES",
    "WORK_POOL",
    "REQUIRED_VARIABLES",
    "DEFAULT_TIMEZONE",
    "DeploymentSpec",
    "RunSettings",
    "dask_runner_from_environment",
    "deployed_flow",
    "deployment_options",
    "load_deployments",
    "pull_step_variables",
    "read_variables",
    "schedule_timezone",
    "serve_deployments",
]

# Read by the process that runs a flow (a worker's flow-run process, or a served run): set them
# in the worker's environment or as the `env` job variable of a deployment or a run.
# (tasks.settings.DaskSettings parses them.)
DASK_SCHEDULER_ENV = variable("dask_scheduler")
DASK_WORKERS_ENV = variable("dask_workers")

WORK_POOL = "aml-smear"

# Prefect variables of the deployments, and what each holds. The nightly reads its own when each run
# starts (flows/nightly.py: NIGHTLY_VARIABLES); the scoring deployments when they are registered.
VARIABLES: Mapping[str, str] = {
    "aml_smear_store": "run store and model registry (a folder or s3:// URL)",
    "aml_smear_retrain_sources": "labelled cell collections of the nightly retrain (a JSON list of URLs)",
    "aml_smear_s3_endpoint_url": "S3-compatible endpoint (MinIO) for s3:// URLs; empty or unset for AWS",
    "aml_smear_incoming": "where new smears arrive, one folder per patient (a folder or s3:// URL); "
    "unset: no new-arrival scoring",
    "aml_smear_backbone_weights": "backbone weights of the nightly: imagenet (downloads), none, or a "
    "weights file path/URL (offline: a file in the store or on S3)",
    "aml_smear_backbone_weights_sha256": "sha256 of that weights file, checked before it is used",
    "aml_smear_recipe": "the nightly's recipe: paper or robust",
    "aml_smear_epochs": "the nightly's most training epochs",
    "aml_smear_image_size": "the nightly's model input side, pixels",
    "aml_smear_retrain_options": "any other retrain parameter of the nightly, a JSON object "
    '(e.g. {"augment_views": 1, "patience": 3})',
    "aml_smear_code_dir": "where the worker's host holds this repository (prefect.yaml's pull step): "
    "the checkout, or /opt/aml-smear in the images",
    "aml_smear_timezone": "IANA time zone of the nightly's 02:00 schedule (default Europe/Berlin)",
}
#: The schedules' time zone when ``aml_smear_timezone`` is unset.
DEFAULT_TIMEZONE = "Europe/Berlin"
# Without these a deployment has no sensible value; the S3 endpoint is optional.
REQUIRED_VARIABLES = frozenset({"aml_smear_store", "aml_smear_retrain_sources"})


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment of a flow, as :func:`load_deployments` reads it from prefect.yaml.

    Attributes:
        flow_name: the Prefect flow's name, e.g. "score-smears".
        name: the deployment's name; runs are started as ``flow_name/name``.
        entrypoint: attribute of ``deployments/entrypoints.py`` holding the Dask-backed flow.
        description: shown in the Prefect UI.
        variables: {flow parameter: Prefect variable} for parameters read from variables
            when the deployment is registered (``prefect deploy`` or ``aml-smear serve``): in
            prefect.yaml, a parameter whose value is ``"{{ prefect.variables.NAME }}"``.
        parameters: fixed parameter values of every run of this deployment.
        cron, timezone: the schedule (IANA time zone), or None for on-demand runs only.
        timezone_variable: the Prefect variable prefect.yaml reads the time zone from
            (``"{{ prefect.variables.aml_smear_timezone }}"``); ``timezone`` is then its default.
        interval_seconds: an interval schedule instead of a cron one, or None.
        requires: variables without which the deployment is not served (and stays paused
            in prefect.yaml until they are set): those it names, but the optional ones and
            those every deployment needs (REQUIRED_VARIABLES, checked for all).
        concurrency_limit: most runs of this deployment at once, or None for no limit.
        collision_strategy: what happens to a run that would exceed the limit: "ENQUEUE" (wait,
            Prefect's default) or "CANCEL_NEW" (cancelled at once).
        timeout_seconds: a run still going after this long fails (TimedOut), or None for none.
        retries, retry_delay_seconds: how often a failed run is run again, and after how long.
            Prefect's flow retries cannot tell a transient fault from any other: every failure
            after the run has started is retried, a check inside the flow (a missing source)
            included; transient I/O is also retried inside the run, per task (``tasks.retry``).
            Invalid parameters (types, choices, bounds: flows.parameters) are never retried: the
            server refuses a deployment run with them, and a run whose parameters fail Prefect's
            validation fails before it is Running (tests/app/test_serve.py).
        tags: Prefect tags.
        alert_on_failure: a run that fails for good (after its retries) or crashes emits
            ``aml-smear.nightly.failed`` (:func:`tasks.events.emit_nightly_failed`).
    """

    flow_name: str
    name: str
    entrypoint: str
    description: str
    variables: Mapping[str, str] = field(default_factory=dict)
    parameters: Mapping[str, Any] = field(default_factory=dict)
    cron: str | None = None
    timezone: str | None = None
    timezone_variable: str | None = None
    interval_seconds: int | None = None
    requires: frozenset[str] = frozenset()
    concurrency_limit: int | None = None
    collision_strategy: str | None = None
    timeout_seconds: int | None = None
    retries: int = 0
    retry_delay_seconds: int = 0
    tags: tuple[str, ...] = ("aml-smear",)
    alert_on_failure: bool = False

    @property
    def full_name(self) -> str:
        """``flow_name/name``, as ``prefect deployment run`` takes it."""
        return f"{self.flow_name}/{self.name}"


# What deployments/prefect.yaml cannot say, by deployment name: the flow behind the entrypoint and
# the flow-run settings that travel with the flow (timeout, retries, the failure alert), so that a
# work pool's run and a served run get them alike.
@dataclass(frozen=True)
class RunSettings:
    """A deployment's flow and the settings of its flow runs (see :class:`DeploymentSpec`)."""

    flow_name: str
    timeout_seconds: int | None = None
    retries: int = 0
    retry_delay_seconds: int = 0
    alert_on_failure: bool = False


RUN_SETTINGS: Mapping[str, RunSettings] = {
    # No flow retries: whoever asked sees a wrong source or store at once, not after a retry;
    # transient I/O is retried per task (tasks.retry), and a failed scoring run again resumes
    # from its finished shards.
    "on-demand": RunSettings("score-smears", timeout_seconds=4 * 3600),
    "new-arrivals": RunSettings("score-smears", timeout_seconds=4 * 3600),
    # A hung retrain fails after the timeout. No flow retry: with a deployment concurrency limit,
    # Prefect 3.9 revokes the run's slot when it goes to AwaitingRetry and the retry never runs
    # (PrefectHQ/prefect#22885; seen here as a run stuck in AwaitingRetry on a real stack). A failed
    # night fails at once, with its reason in its state and an aml-smear.nightly.failed event;
    # transient I/O is retried per task (tasks.retry), and the next night runs again.
    "nightly": RunSettings("retrain-and-evaluate", timeout_seconds=8 * 3600, alert_on_failure=True),
}
# Variables a deployment may do without: unset, the S3 endpoint is AWS's.
OPTIONAL_VARIABLES = frozenset({"aml_smear_s3_endpoint_url"})
_TEMPLATE = re.compile(r"^\{\{\s*prefect\.variables\.(\w+)\s*\}\}$")
_SCHEDULE_KEYS = frozenset({"cron", "timezone", "interval", "active"})


def _spec(declared: Mapping[str, Any]) -> DeploymentSpec:
    """One deployment of prefect.yaml as a :class:`DeploymentSpec` (with its :data:`RUN_SETTINGS`).

    Raises:
        ValueError: prefect.yaml says something ``aml-smear serve`` would not serve as declared
            (the message names the deployment and what to change).
    """
    name, parameters = declared["name"], declared.get("parameters") or {}
    if name not in RUN_SETTINGS:
        message = f"deployment {name!r} of prefect.yaml has no RunSettings: add it to app.serve.RUN_SETTINGS"
        raise ValueError(message)
    templated = {
        key: match.group(1)
        for key, value in parameters.items()
        if isinstance(value, str) and (match := _TEMPLATE.match(value))
    }
    partial = [
        key
        for key, value in parameters.items()
        if key not in templated and isinstance(value, str) and "{{" in value
    ]
    schedules = declared.get("schedules") or []
    unknown = sorted({key for schedule in schedules for key in schedule} - _SCHEDULE_KEYS)
    requires = frozenset(templated.values()) - OPTIONAL_VARIABLES - REQUIRED_VARIABLES
    # serve activates a schedule once the variables its deployment needs are set: prefect.yaml
    # must say the same (paused exactly when there are such variables, until they are set).
    if (
        partial
        or unknown
        or any(schedule.get("active", True) == bool(requires) for schedule in schedules)
    ):
        message = (
            f"deployment {name!r} of prefect.yaml: aml-smear serve reads a parameter that is a whole "
            f"'{{{{ prefect.variables.NAME }}}}' (not {partial}), schedules of cron, timezone, interval and "
            f"active (not {unknown}), active: {str(not requires).lower()} here"
        )
        raise ValueError(message)
    cron = next((s for s in schedules if "cron" in s), {})
    zone = _TEMPLATE.match(str(cron.get("timezone", "")))
    interval = next((s["interval"] for s in schedules if "interval" in s), None)
    limit = declared.get("concurrency_limit")
    settings = RUN_SETTINGS[name]
    return DeploymentSpec(
        flow_name=settings.flow_name,
        name=name,
        entrypoint=declared["entrypoint"].rpartition(":")[2],
        description=declared["description"],
        variables=templated,
        parameters={k: v for k, v in parameters.items() if k not in templated},
        cron=cron.get("cron"),
        timezone=DEFAULT_TIMEZONE if zone else cron.get("timezone"),
        timezone_variable=zone.group(1) if zone else None,
        interval_seconds=interval,
        requires=requires,
        concurrency_limit=limit["limit"] if isinstance(limit, dict) else limit,
        collision_strategy=limit.get("collision_strategy") if isinstance(limit, dict) else None,
        timeout_seconds=settings.timeout_seconds,
        retries=settings.retries,
        retry_delay_seconds=settings.retry_delay_seconds,
        tags=tuple(declared.get("tags", ())),
        alert_on_failure=settings.alert_on_failure,
    )


def pull_step_variables(text: str | None = None) -> frozenset[str]:
    """The Prefect variables that ``prefect.yaml``'s pull steps read on the worker when a run starts
    (``aml_smear_code_dir``): a work-pool deployment needs them set, ``aml-smear serve`` does not."""
    if text is None:
        text = (importlib.resources.files("deployments") / "prefect.yaml").read_text()
    found: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str) and (match := _TEMPLATE.match(node)):
            found.add(match.group(1))

    walk(yaml.safe_load(text).get("pull") or [])
    return frozenset(found)


def load_deployments(text: str | None = None) -> tuple[DeploymentSpec, ...]:
    """The deployments that ``deployments/prefect.yaml`` declares (or ``text``, a prefect.yaml)."""
    if text is None:
        text = (importlib.resources.files("deployments") / "prefect.yaml").read_text()
    return tuple(_spec(declared) for declared in yaml.safe_load(text)["deployments"])


DEPLOYMENTS: tuple[DeploymentSpec, ...] = load_deployments()
_BY_NAME = {spec.name: spec for spec in DEPLOYMENTS}
SCORE_ON_DEMAND, NIGHTLY_RETRAIN, SCORE_NEW_ARRIVALS = (
    _BY_NAME["on-demand"],
    _BY_NAME["nightly"],
    _BY_NAME["new-arrivals"],
)


def dask_runner_from_environment(environ: Mapping[str, str] | None = None) -> DaskTaskRunner:
    """The Dask task runner named by ``AML_SMEAR_DASK_SCHEDULER`` / ``AML_SMEAR_DASK_WORKERS``.

    Args:
        environ: the environment to read; ``os.environ`` by default.

    Returns:
        A runner for the scheduler address when one is set, else a LocalCluster of the given
        number of workers (default one per CPU core).

    Raises:
        ValueError: AML_SMEAR_DASK_WORKERS is not a positive integer (tasks.settings.SettingError), or both
            are set.
    """
    settings = DaskSettings.read(environ)
    return dask_task_runner(settings.dask_workers, settings.dask_scheduler)


def deployed_flow(spec: DeploymentSpec, task_runner: DaskTaskRunner) -> Flow:
    """The flow of ``spec`` on ``task_runner``."""
    # Imported here: the flows pull in the tasks and their libraries, which `--help` does not need.
    from flows.nightly import nightly_retrain
    from flows.score import score_smears
    from tasks.events import emit_nightly_failed

    # The nightly's flow (named retrain-and-evaluate too) reads its configuration when a run starts.
    flows = {flow.name: flow for flow in (score_smears, nightly_retrain)}
    # Timeout, retries and hooks are the flow's settings: a work pool's run and a served run get them alike.
    hooks = [emit_nightly_failed] if spec.alert_on_failure else None
    return flows[spec.flow_name].with_options(
        task_runner=task_runner,
        timeout_seconds=spec.timeout_seconds,
        retries=spec.retries,
        retry_delay_seconds=spec.retry_delay_seconds,
        on_failure=hooks,
        on_crashed=hooks,
    )


def read_variables(names: set[str] | frozenset[str]) -> dict[str, Any]:
    """The values of the Prefect variables ``names`` that are set (needs a Prefect API).

    Raises:
        ValueError: a variable in REQUIRED_VARIABLES is not set; the message says how to set it.
    """
    from prefect.variables import Variable

    values = {name: Variable.get(name) for name in sorted(names)}
    missing = sorted(
        name for name, value in values.items() if value is None and name in REQUIRED_VARIABLES
    )
    if missing:
        examples = "; ".join(
            f"prefect variable set {name} '<{VARIABLES[name]}>'" for name in missing
        )
        message = f"Prefect variable(s) {', '.join(missing)} not set: {examples}"
        raise ValueError(message)
    return {name: value for name, value in values.items() if value is not None}


def schedule_timezone(spec: DeploymentSpec, variables: Mapping[str, Any]) -> str | None:
    """The time zone of ``spec``'s cron schedule: its variable's value where set, else its default."""
    return (
        variables.get(spec.timezone_variable) or spec.timezone
        if spec.timezone_variable
        else spec.timezone
    )


def deployment_options(spec: DeploymentSpec, variables: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``Flow.to_deployment`` / ``Runner.add_flow`` for ``spec``.

    Args:
        spec: the deployment.
        variables: Prefect variable values by name (see :func:`read_variables`); a parameter
            whose variable is absent keeps the flow's default.
    """
    from datetime import timedelta

    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.schedules import Cron, Interval
    from prefect.types.entrypoint import EntrypointType

    concurrency = spec.concurrency_limit
    if concurrency is not None and spec.collision_strategy is not None:
        concurrency = ConcurrencyLimitConfig(
            limit=concurrency, collision_strategy=spec.collision_strategy
        )
    schedules = [Cron(spec.cron, timezone=schedule_timezone(spec, variables))] if spec.cron else []
    if spec.interval_seconds:
        schedules.append(Interval(timedelta(seconds=spec.interval_seconds)))
    return {
        "name": spec.name,
        "description": spec.description,
        "parameters": {
            **spec.parameters,
            **{
                parameter: variables[variable]
                for parameter, variable in spec.variables.items()
                if variable in variables
            },
        },
        "schedules": schedules,
        "concurrency_limit": concurrency,
        "tags": list(spec.tags),
        # Recorded for the UI only: the runner runs the flow objects it was given.
        "entrypoint_type": EntrypointType.MODULE_PATH,
    }


def serve_deployments(task_runner: DaskTaskRunner, limit: int | None = None) -> None:
    """Register DEPLOYMENTS with the configured Prefect API and run their flows until stopped.

    This is what ``prefect.serve()`` does, with one difference that matters here: ``serve()``
    reloads each flow from its entrypoint, which would drop the Dask task runner, while
    ``Runner.add_flow`` keeps the flow objects given to it. Runs start in subprocesses of this
    process; on shutdown the schedules are paused, so the nightly retrain does not pile up runs
    while nothing serves it. The runner's webserver stays off (Prefect's default): no port is bound.

    Raises:
        ValueError: no Prefect API is configured, or a required variable is not set.
    """
    import asyncio

    from prefect.runner import Runner
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        message = (
            "aml-smear serve needs a Prefect server: start one (`prefect server start`) and set "
            "PREFECT_API_URL, e.g. http://127.0.0.1:4200/api"
        )
        raise ValueError(message)
    names = {variable for spec in DEPLOYMENTS for variable in spec.variables.values()}
    names |= {spec.timezone_variable for spec in DEPLOYMENTS if spec.timezone_variable}
    variables = read_variables(names)
    runner = Runner(name="aml-smear-serve", limit=limit, pause_on_shutdown=True)
    for spec in DEPLOYMENTS:
        if not spec.requires <= variables.keys():
            print(
                f"not serving {spec.full_name}: set {', '.join(sorted(spec.requires - variables.keys()))}",
                flush=True,
            )
            continue
        runner.add_flow(deployed_flow(spec, task_runner), **deployment_options(spec, variables))
        schedule = (
            f" ({spec.cron}, {schedule_timezone(spec, variables)})"
            if spec.cron
            else f" (every {spec.interval_seconds // 60} min)"
            if spec.interval_seconds
            else ""
        )
        print(f"serving {spec.full_name}{schedule}", flush=True)
    try:
        asyncio.run(runner.start())
    except KeyboardInterrupt:
        pass
