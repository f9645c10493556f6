"""deployments/prefect.yaml declares the deployments, and app/serve.py serves them from it; the Dask
runner comes from the environment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from app.cli import cli
from app.serve import (
    DASK_SCHEDULER_ENV,
    DASK_WORKERS_ENV,
    DEPLOYMENTS,
    NIGHTLY_RETRAIN,
    RUN_SETTINGS,
    SCORE_NEW_ARRIVALS,
    SCORE_ON_DEMAND,
    VARIABLES,
    WORK_POOL,
    dask_runner_from_environment,
    load_deployments,
    serve_deployments,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
PREFECT_YAML = REPO_ROOT / "deployments" / "prefect.yaml"


@pytest.fixture(scope="module")
def prefect_yaml() -> dict:
    return yaml.safe_load(PREFECT_YAML.read_text())


def _by_name(prefect_yaml: dict) -> dict[str, dict]:
    return {deployment["name"]: deployment for deployment in prefect_yaml["deployments"]}


def test_serve_reads_the_deployments_from_prefect_yaml(prefect_yaml):
    deployments = _by_name(prefect_yaml)
    assert [spec.name for spec in DEPLOYMENTS] == list(deployments) and set(RUN_SETTINGS) == set(
        deployments
    )
    for spec in DEPLOYMENTS:
        declared = deployments[spec.name]
        assert declared["entrypoint"] == f"deployments/entrypoints.py:{spec.entrypoint}"
        assert declared["work_pool"]["name"] == WORK_POOL
        # A schedule waits, paused, for the variables its deployment needs (a deploy without them reads "").
        assert all(schedule["active"] == (not spec.requires) for schedule in declared["schedules"])
    assert NIGHTLY_RETRAIN.cron == "0 2 * * *" and NIGHTLY_RETRAIN.timezone == "Europe/Berlin"
    assert SCORE_ON_DEMAND.cron is None and SCORE_ON_DEMAND.variables == {
        "s3_endpoint_url": "aml_smear_s3_endpoint_url"
    }
    assert (
        SCORE_NEW_ARRIVALS.parameters == {"new_only": True}
        and SCORE_NEW_ARRIVALS.interval_seconds == 900
    )
    assert SCORE_NEW_ARRIVALS.variables["source"] == "aml_smear_incoming"


def test_a_change_to_prefect_yaml_is_a_change_to_the_served_deployments():
    text = PREFECT_YAML.read_text()
    assert text.count('cron: "0 2 * * *"') == 1 and text.count("limit: 1\n") == 2
    edited = text.replace('cron: "0 2 * * *"', 'cron: "30 3 * * *"').replace(
        "      new_only: true\n", "      new_only: false\n"
    )
    by_name = {spec.name: spec for spec in load_deployments(edited)}
    assert by_name["nightly"].cron == "30 3 * * *" and by_name["new-arrivals"].parameters == {
        "new_only": False
    }
    assert by_name["nightly"].timeout_seconds == RUN_SETTINGS["nightly"].timeout_seconds
    assert by_name["nightly"].alert_on_failure and not by_name["on-demand"].alert_on_failure


@pytest.mark.parametrize(
    ("old", "new", "refusal"),
    [
        (
            "  - name: on-demand\n",
            "  - name: on-request\n",
            "'on-request' of prefect.yaml has no RunSettings",
        ),
        (
            'timezone: "{{ prefect.variables.aml_smear_timezone }}"\n      active: true',
            'timezone: "{{ prefect.variables.aml_smear_timezone }}"\n      active: false',
            "active: true here",
        ),
        ("        active: false\n", "        active: true\n", "active: false here"),
        (
            "      new_only: true\n",
            '      new_only: true\n      label: "lab-{{ prefect.variables.site }}"\n',
            "(not ['label'])",
        ),
    ],
)
def test_what_serve_could_not_serve_as_declared_is_refused_by_name(old, new, refusal):
    text = PREFECT_YAML.read_text()
    assert text.count(old) == 1
    with pytest.raises(ValueError, match=re.escape(refusal)):
        load_deployments(text.replace(old, new))


def test_documented_job_variables_name_the_settings_the_runner_reads(prefect_yaml):
    job_variables = prefect_yaml["definitions"]["job_variables"]
    assert set(job_variables["gpu_cluster"]["env"]) == {DASK_SCHEDULER_ENV}
    assert set(job_variables["local_cluster"]["env"]) == {DASK_WORKERS_ENV}
    # Deploying needs no build or push: the code is on the worker's host, in the directory a
    # variable names, read by the pull step when each run starts (not when deploying).
    assert prefect_yaml["build"] is None and prefect_yaml["push"] is None
    (step,) = prefect_yaml["pull"]
    assert step == {
        "prefect.deployments.steps.set_working_directory": {
            "directory": "{{ prefect.variables.aml_smear_code_dir }}"
        }
    }
    assert "aml_smear_code_dir" in VARIABLES
    # The documented alternative, a pinned commit cloned on each run, names real step arguments.
    import inspect

    from prefect.deployments.steps import git_clone

    text = PREFECT_YAML.read_text()
    for argument in ("repository", "commit_sha"):
        assert (
            f"#      {argument}: " in text and argument in inspect.signature(git_clone).parameters
        )


def test_the_nightly_reads_its_variables_when_a_run_starts(prefect_yaml):
    from flows.nightly import NIGHTLY_VARIABLES, OPTIONS_VARIABLE, RETRAIN_PARAMETERS

    # Nothing is fixed at deploy time: every parameter of the nightly comes from a variable at run time.
    assert _by_name(prefect_yaml)["nightly"]["parameters"] == {} and NIGHTLY_RETRAIN.variables == {}
    assert set(NIGHTLY_VARIABLES) <= RETRAIN_PARAMETERS
    assert {*NIGHTLY_VARIABLES.values(), OPTIONS_VARIABLE} <= set(
        VARIABLES
    )  # documented, set by local_stack
    assert {
        "store",
        "sources",
        "backbone_weights",
        "backbone_weights_sha256",
        "recipe",
        "epochs",
    } <= set(NIGHTLY_VARIABLES)


@pytest.mark.parametrize("spec", DEPLOYMENTS, ids=lambda spec: spec.full_name)
def test_entrypoints_are_the_flows_on_the_dask_runner_from_the_environment(spec, monkeypatch):
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.setenv(DASK_SCHEDULER_ENV, "tcp://127.0.0.1:8786")
    monkeypatch.delenv(DASK_WORKERS_ENV, raising=False)
    flow = load_flow_from_entrypoint(
        f"{REPO_ROOT / 'deployments' / 'entrypoints.py'}:{spec.entrypoint}"
    )
    assert flow.name == spec.flow_name
    assert flow.task_runner.address == "tcp://127.0.0.1:8786"
    # Timeout and retries travel with the flow: `prefect deploy` and `aml-smear serve` runs get them alike.
    assert (flow.timeout_seconds, flow.retries, flow.retry_delay_seconds) == (
        spec.timeout_seconds,
        spec.retries,
        spec.retry_delay_seconds,
    )


def test_a_hung_or_failing_nightly_is_over_before_the_next_night():
    spec = NIGHTLY_RETRAIN
    assert (spec.concurrency_limit, spec.collision_strategy) == (1, "CANCEL_NEW")
    # No flow retry: Prefect 3.9 drops a flow retry under a deployment concurrency limit
    # (PrefectHQ/prefect#22885); a failed night is reported at once and the next night runs.
    assert spec.timeout_seconds and spec.retries == 0
    assert spec.timeout_seconds < 24 * 3600
    # On-demand scoring is never cancelled for another run, and times out; a failure is reported at once.
    assert SCORE_ON_DEMAND.concurrency_limit is None and SCORE_ON_DEMAND.timeout_seconds
    assert SCORE_ON_DEMAND.retries == 0


def test_dask_runner_from_environment():
    assert (
        dask_runner_from_environment({DASK_SCHEDULER_ENV: "tcp://10.0.0.5:8786"}).address
        == "tcp://10.0.0.5:8786"
    )
    local = dask_runner_from_environment({DASK_WORKERS_ENV: "3"})
    assert local.address is None and local.cluster_kwargs["n_workers"] == 3
    with pytest.raises(ValueError, match="AML_SMEAR_DASK_WORKERS='two' is invalid"):
        dask_runner_from_environment({DASK_WORKERS_ENV: "two"})
    with pytest.raises(ValueError, match="AML_SMEAR_DASK_WORKERS='0' is invalid"):
        dask_runner_from_environment({DASK_WORKERS_ENV: "0"})
    with pytest.raises(ValueError, match="not both"):
        dask_runner_from_environment(
            {DASK_WORKERS_ENV: "2", DASK_SCHEDULER_ENV: "tcp://10.0.0.5:8786"}
        )


def test_served_deployments_have_the_names_schedule_and_variable_parameters():
    from app.serve import deployed_flow, deployment_options

    runner = dask_runner_from_environment({DASK_WORKERS_ENV: "1"})
    variables = {
        "aml_smear_store": "s3://lab/store",
        "aml_smear_retrain_sources": ["s3://lab/labelled"],
    }
    # What Runner.add_flow builds from the same options, without registering anything.
    on_demand, nightly, arrivals = (
        deployed_flow(spec, runner).to_deployment(**deployment_options(spec, variables))
        for spec in DEPLOYMENTS
    )

    assert (on_demand.flow_name, on_demand.name) == ("score-smears", "on-demand")
    assert (
        not on_demand.schedules and on_demand.parameters == {}
    )  # no endpoint variable: the flow's default
    assert (nightly.flow_name, nightly.name) == ("retrain-and-evaluate", "nightly")
    (schedule,) = nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 2 * * *", "Europe/Berlin")
    assert nightly.parameters == {}  # read from the variables when each run starts
    assert nightly.concurrency_limit == 1
    assert nightly.concurrency_options.collision_strategy == "CANCEL_NEW"
    assert on_demand.concurrency_limit is None
    assert on_demand.entrypoint == "flows.score.score_smears"
    assert deployed_flow(NIGHTLY_RETRAIN, runner).task_runner is runner
    # New arrivals: every 15 minutes, only what the champion has not scored, one pass at a time.
    assert (arrivals.flow_name, arrivals.name) == ("score-smears", "new-arrivals")
    (schedule,) = arrivals.schedules
    assert schedule.schedule.interval.total_seconds() == 900
    assert arrivals.parameters == {
        "new_only": True,
        "store": "s3://lab/store",
    }  # no incoming variable given
    assert arrivals.concurrency_options.collision_strategy == "CANCEL_NEW"
    assert SCORE_NEW_ARRIVALS.requires == {"aml_smear_incoming"}


def test_serve_refuses_to_start_without_a_prefect_api():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with pytest.raises(ValueError, match="needs a Prefect server.*PREFECT_API_URL"):
            serve_deployments(dask_runner_from_environment({DASK_WORKERS_ENV: "1"}))


def test_serve_command_help_and_argument_errors():
    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0 and "without a work pool" in result.output
    both = CliRunner().invoke(
        cli, ["serve", "--workers", "2", "--scheduler", "tcp://10.0.0.5:8786"]
    )
    assert both.exit_code == 1 and "not both" in both.output


def test_the_pull_steps_variable_is_required_where_work_pools_deploy():
    from app.serve import REQUIRED_VARIABLES, pull_step_variables

    assert pull_step_variables() == {"aml_smear_code_dir"}, (
        "the one pull step changes to the code's folder"
    )
    assert not pull_step_variables() & REQUIRED_VARIABLES, (
        "aml-smear serve runs in place: it needs no pull step"
    )
    text = "pull:\n  - prefect.deployments.steps.git_clone:\n      repository: '{{ prefect.variables.repo }}'\n"
    assert pull_step_variables(text) == {"repo"}


def test_the_nightlys_time_zone_is_a_variable_with_a_default():
    from app.serve import DEFAULT_TIMEZONE, deployment_options, schedule_timezone

    assert (
        NIGHTLY_RETRAIN.timezone_variable == "aml_smear_timezone"
        and NIGHTLY_RETRAIN.timezone == DEFAULT_TIMEZONE
    )
    assert schedule_timezone(NIGHTLY_RETRAIN, {}) == "Europe/Berlin"
    options = deployment_options(NIGHTLY_RETRAIN, {"aml_smear_timezone": "America/Chicago"})
    (schedule,) = options["schedules"]
    assert (schedule.cron, schedule.timezone) == ("0 2 * * *", "America/Chicago")
