"""infra/kubernetes/: the Kubernetes recipe parses, has what its consumers require, and agrees with
itself and with the code.

Nothing there was applied to a cluster (infra/kubernetes/README.md): these are structure checks,
plus ``kubectl kustomize`` where kubectl is installed (it builds offline; ``kubectl apply
--dry-run=client`` needs an API server even with ``--validate=false``, so it is not used).
No TensorFlow: tasks.devices and tasks.settings import none.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from flows.runner import DASK_LOG_LENGTH, DASK_LOG_LENGTH_ENV, WORKER_PROFILE_ENV
from tasks.devices import GPU_RESOURCE
from tasks.settings import SETTINGS, variable

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA = REPO_ROOT / "infra"
KUBERNETES = INFRA / "kubernetes"
HELM = KUBERNETES / "helm"
TEMPLATE = KUBERNETES / "base-job-template.json"
NAMESPACE = "aml-smear"
# The names the images of infra/*.Dockerfile go by here; kustomization.yaml's `images` maps them.
IMAGES = {"aml-smear-cpu": INFRA / "cpu.Dockerfile", "aml-smear-gpu": INFRA / "gpu.Dockerfile"}
S3_SECRET = "aml-smear-s3"
S3_KEYS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
# Environment variables whose value is a credential: only ever from a Secret.
CREDENTIAL = re.compile(r"KEY|SECRET|PASSWORD|TOKEN|CREDENTIAL|AUTH|CONNECTION")
# Kubernetes object names: a lowercase RFC 1123 subdomain.
OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
# The Dask operator's rule for a DaskCluster's name (dask_kubernetes.constants.VALID_CLUSTER_NAME):
# NAME-scheduler must fit in 63 characters.
CLUSTER_NAME = re.compile(r"^(?=.{,53}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
PLACEHOLDER = re.compile(r"\{\{\s*([\w.]+)\s*\}\}")


def _load_yaml_documents(path: Path) -> list[dict]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


@pytest.fixture(scope="module")
def kustomization() -> dict:
    return yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())


@pytest.fixture(scope="module")
def manifests(kustomization) -> dict[str, list[dict]]:
    """{file: its objects} for every resource the kustomization lists."""
    return {name: _load_yaml_documents(KUBERNETES / name) for name in kustomization["resources"]}


@pytest.fixture(scope="module")
def objects(manifests) -> dict[str, dict]:
    """{kind: the one object of that kind}."""
    found: dict[str, dict] = {}
    for documents in manifests.values():
        for document in documents:
            assert document["kind"] not in found, f"two objects of kind {document['kind']}"
            found[document["kind"]] = document
    return found


@pytest.fixture(scope="module")
def template() -> dict:
    return json.loads(TEMPLATE.read_text())


@pytest.fixture(scope="module")
def server_values() -> dict:
    return yaml.safe_load((HELM / "prefect-server.yaml").read_text())


@pytest.fixture(scope="module")
def worker_values() -> dict:
    return yaml.safe_load((HELM / "prefect-worker.yaml").read_text())


def _containers(node: Any) -> Iterator[dict]:
    """Every container of every pod spec anywhere in ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from value
            else:
                yield from _containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)


def _env_entries(node: Any) -> Iterator[dict]:
    """Every ``{name, value | valueFrom}`` entry of every ``env`` list anywhere in ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                yield from value
            else:
                yield from _env_entries(value)
    elif isinstance(node, list):
        for item in node:
            yield from _env_entries(item)


def _option(command: list[str], flag: str) -> str:
    assert command.count(flag) == 1, (flag, command)
    return command[command.index(flag) + 1]


def _scheduler_address(cluster: dict) -> str:
    """The address the operator's Service gives the scheduler: NAME-scheduler in the namespace."""
    (comm,) = [
        p for p in cluster["spec"]["scheduler"]["service"]["ports"] if p["name"] == "tcp-comm"
    ]
    name = cluster["metadata"]["name"]
    return f"tcp://{name}-scheduler.{NAMESPACE}.svc.cluster.local:{comm['port']}"


def _job_manifest(template: dict) -> dict:
    return template["job_configuration"]["job_manifest"]


def _pins() -> dict[str, str]:
    lines = (
        line.split("#")[0].strip()
        for line in (REPO_ROOT / "constraints.txt").read_text().splitlines()
    )
    return dict(line.lower().split("==", 1) for line in lines if "==" in line)


def test_every_manifest_parses_and_names_its_kind_and_itself(kustomization, manifests):
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert manifests
    for name, documents in manifests.items():
        assert documents, name
        for document in documents:
            assert isinstance(document.get("apiVersion"), str) and document["apiVersion"], name
            assert isinstance(document.get("kind"), str) and document["kind"], name
            assert OBJECT_NAME.match(document["metadata"]["name"]), (name, document["metadata"])
    for path in HELM.iterdir():
        values = yaml.safe_load(path.read_text())
        assert isinstance(values, dict) and values, path


def test_the_kustomization_lists_every_file_and_every_listed_file_exists(kustomization):
    listed = set(kustomization["resources"])
    for generator in kustomization.get("configMapGenerator", []):
        listed |= {entry.split("=", 1)[-1] for entry in generator.get("files", [])}
    for name in listed:
        assert (KUBERNETES / name).is_file(), name
    on_disk = {
        path.name
        for path in KUBERNETES.iterdir()
        if path.is_file() and path.name not in ("kustomization.yaml", "README.md")
    }
    assert on_disk == listed
    # Helm values are not Kubernetes objects: they live in helm/, and the README says how to
    # use each.
    readme = (KUBERNETES / "README.md").read_text()
    assert {path.name for path in HELM.iterdir()} == {"prefect-server.yaml", "prefect-worker.yaml"}
    for path in HELM.iterdir():
        assert f"helm/{path.name}" in readme, path.name


def test_one_namespace_for_everything(kustomization, objects, manifests):
    assert kustomization["namespace"] == NAMESPACE
    assert objects["Namespace"]["metadata"]["name"] == NAMESPACE
    for documents in manifests.values():
        for document in documents:
            assert document["metadata"].get("namespace", NAMESPACE) == NAMESPACE


def test_the_dask_cluster_has_what_the_operators_crd_requires(objects):
    cluster = objects["DaskCluster"]
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1"
    assert CLUSTER_NAME.match(cluster["metadata"]["name"])
    spec = cluster["spec"]
    # DaskCluster: spec.scheduler {spec, service} and spec.worker {spec} are required, and each
    # spec is a PodSpec (containers required, each with a name).
    assert {"scheduler", "worker"} <= set(spec)
    assert {"spec", "service"} <= set(spec["scheduler"])
    for pod in (spec["scheduler"]["spec"], spec["worker"]["spec"]):
        assert pod["containers"]
        for container in pod["containers"]:
            assert container["name"] and container["image"] and container["command"], container
    (scheduler,) = spec["scheduler"]["spec"]["containers"]
    assert scheduler["command"][:2] == ["dask", "scheduler"]
    container_ports = {p["name"]: p["containerPort"] for p in scheduler["ports"]}
    assert container_ports == {"tcp-comm": 8786, "http-dashboard": 8787}
    assert _option(scheduler["command"], "--port") == "8786"
    assert _option(scheduler["command"], "--dashboard-address") == ":8787"
    service = spec["scheduler"]["service"]
    service_ports = {p["name"]: p for p in service["ports"]}
    assert {name: p["port"] for name, p in service_ports.items()} == container_ports
    for name, port in service_ports.items():
        assert port["targetPort"] in (name, container_ports[name])
    assert service["selector"] == {
        "dask.org/cluster-name": cluster["metadata"]["name"],
        "dask.org/component": "scheduler",
    }
    # /health is served without bokeh (the images have none), on the http-dashboard port.
    for probe in ("readinessProbe", "livenessProbe"):
        assert scheduler[probe]["httpGet"] == {"port": "http-dashboard", "path": "/health"}
    assert spec["worker"]["replicas"] >= 1


def test_the_gpu_group_joins_the_cluster_and_each_worker_has_one_gpu(objects):
    cluster, group = objects["DaskCluster"], objects["DaskWorkerGroup"]
    assert group["apiVersion"] == "kubernetes.dask.org/v1"
    # DaskWorkerGroup: spec.cluster and spec.worker {spec} are required.
    assert group["spec"]["cluster"] == cluster["metadata"]["name"]
    (worker,) = group["spec"]["worker"]["spec"]["containers"]
    assert worker["name"] and worker["image"].startswith("aml-smear-gpu:")
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    command = worker["command"]
    # The resource model tasks ask for (tasks.devices.model_tasks), one unit per worker.
    assert _option(command, "--resources") == f"{GPU_RESOURCE}=1"
    assert _option(command, "--nworkers") == "1" and _option(command, "--nthreads") == "1"


def test_cpu_workers_and_the_scheduler_ask_for_no_gpu(objects):
    spec = objects["DaskCluster"]["spec"]
    for container in _containers(spec):
        assert container["image"].startswith("aml-smear-cpu:"), container["name"]
        assert "nvidia.com/gpu" not in container.get("resources", {}).get("limits", {})
        assert "--resources" not in container["command"]
    (worker,) = spec["worker"]["spec"]["containers"]
    assert _option(worker["command"], "--nworkers") == "1"
    assert _option(worker["command"], "--nthreads") == "1"


def test_the_dask_processes_keep_the_flows_history_length_and_workers_no_profiler(objects):
    # As the Dask processes a flow starts (flows/runner.py): a stream's history holds whole
    # messages, tasks' arguments included, and a profiler keeps a profile a second.
    spec, group = objects["DaskCluster"]["spec"], objects["DaskWorkerGroup"]["spec"]
    (scheduler,) = spec["scheduler"]["spec"]["containers"]
    (worker,) = spec["worker"]["spec"]["containers"]
    (gpu_worker,) = group["worker"]["spec"]["containers"]
    for container in (scheduler, worker, gpu_worker):
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env[DASK_LOG_LENGTH_ENV] == str(DASK_LOG_LENGTH), container["name"]
        if container is not scheduler:
            assert env[WORKER_PROFILE_ENV] == "False", container["name"]


def test_workers_join_the_scheduler_the_operator_names(objects):
    # The operator sets DASK_SCHEDULER_ADDRESS and DASK_WORKER_NAME in each worker container;
    # Kubernetes expands $(VAR) in the command from the container's environment.
    for group in (
        objects["DaskCluster"]["spec"]["worker"],
        objects["DaskWorkerGroup"]["spec"]["worker"],
    ):
        for container in group["spec"]["containers"]:
            command = container["command"]
            assert command[:3] == ["dask", "worker", "$(DASK_SCHEDULER_ADDRESS)"], command
            assert _option(command, "--name") == "$(DASK_WORKER_NAME)"
            names = {entry["name"] for entry in container.get("env", [])}
            assert not names & {"DASK_SCHEDULER_ADDRESS", "DASK_WORKER_NAME"}


def test_dask_resource_quantities_are_strings(objects):
    # The operator's CRDs type requests and limits as maps of strings: an unquoted 1 is refused.
    for kind in ("DaskCluster", "DaskWorkerGroup"):
        for container in _containers(objects[kind]["spec"]):
            resources = container["resources"]
            assert resources["requests"]["memory"] and resources["limits"]["memory"], container
            for part in ("requests", "limits"):
                for name, quantity in resources.get(part, {}).items():
                    assert isinstance(quantity, str), (kind, container["name"], part, name)


def test_dask_workers_memory_limit_is_the_containers(objects):
    # Dask's --memory-limit is the pod's limit: Dask pauses and restarts the worker before the
    # kernel kills the pod. The request covers the measured 2.8 GB peak (infra/README.md, Scale).
    for kind, group in (
        ("DaskCluster", objects["DaskCluster"]["spec"]["worker"]),
        ("DaskWorkerGroup", objects["DaskWorkerGroup"]["spec"]["worker"]),
    ):
        (container,) = group["spec"]["containers"]
        limit = _option(container["command"], "--memory-limit")
        assert limit.endswith("GiB"), (kind, limit)
        assert container["resources"]["limits"]["memory"] == limit.removesuffix("B"), kind
        assert int(container["resources"]["requests"]["memory"].removesuffix("Gi")) >= 3, kind


def test_the_work_pool_template_sends_flow_runs_to_the_scheduler_service(objects, template):
    env = template["job_configuration"]["env"]
    assert env[variable("dask_scheduler")] == _scheduler_address(objects["DaskCluster"])
    assert variable("dask_workers") not in env  # a flow run would start a LocalCluster instead
    properties = template["variables"]["properties"]
    assert properties["namespace"]["default"] == NAMESPACE
    assert properties["image"]["default"] == "aml-smear-cpu:TAG"


def test_the_work_pool_template_is_one_prefect_accepts(template):
    assert set(template) == {"job_configuration", "variables"}
    configuration, variables = template["job_configuration"], template["variables"]
    # Prefect's server-side check (validate_base_job_template): every placeholder is a variable.
    used = set(PLACEHOLDER.findall(json.dumps(configuration)))
    assert used and used <= set(variables["properties"]), used - set(variables["properties"])
    # The variables are a JSON schema, and its defaults satisfy it.
    jsonschema.Draft202012Validator.check_schema(variables)
    defaults = {
        name: spec["default"] for name, spec in variables["properties"].items() if "default" in spec
    }
    jsonschema.validate(defaults, variables)
    # What prefect-kubernetes's worker insists on (_get_base_job_manifest) and fills in itself.
    manifest = _job_manifest(template)
    assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "Job"
    pod = manifest["spec"]["template"]["spec"]
    assert (pod["parallelism"], pod["completions"], pod["restartPolicy"]) == (1, 1, "Never")
    job = pod["containers"][0]
    assert job["name"] == "prefect-job"
    assert job["args"] == "{{ command }}" and job["image"] == "{{ image }}"
    # No retry of a failed flow-run pod: Prefect decides about reruns (deployments/README.md).
    assert manifest["spec"]["backoffLimit"] == 0


def test_every_aml_smear_variable_in_the_manifests_is_a_setting(manifests, template):
    known = {variable(name) for cls in SETTINGS for name in cls.model_fields}
    named = {entry["name"] for entry in _env_entries([manifests, template])}
    named |= set(template["job_configuration"]["env"])
    ours = {name for name in named if name.startswith("AML_SMEAR_")}
    assert variable("dask_scheduler") in ours and variable("cache_dir") in ours
    assert ours <= known, ours - known


def test_no_credential_is_written_in_the_manifests(
    kustomization, manifests, template, server_values, worker_values
):
    everything = [manifests, template, server_values, worker_values]
    entries = list(_env_entries(everything))
    assert entries
    for entry in entries:
        if CREDENTIAL.search(entry["name"]):
            assert "value" not in entry, entry["name"]
            reference = entry["valueFrom"]["secretKeyRef"]
            assert reference["name"] and reference["key"], entry
    for name in template["job_configuration"]["env"]:
        assert not CREDENTIAL.search(name), f"{name} would be stored by Prefect and shown in its UI"
    assert not CREDENTIAL.search(
        json.dumps(template["variables"]["properties"]["env"].get("default", {}))
    )
    # No Secret object and no generated one: Secrets are made by hand (README.md).
    assert all(d["kind"] != "Secret" for documents in manifests.values() for d in documents)
    assert "secretGenerator" not in kustomization
    # The charts get the database URL from a Secret too, and no password.
    assert server_values["postgresql"]["enabled"] is False
    assert server_values["secret"] == {"create": False, "name": server_values["secret"]["name"]}

    def passwords(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if re.search(r"password|authstring|connectionstring", key, re.I) and value:
                    yield key
                yield from passwords(value)
        elif isinstance(node, list):
            for item in node:
                yield from passwords(item)

    assert list(passwords([server_values, worker_values])) == []


def test_everything_that_touches_the_store_reads_the_s3_secret(objects, template):
    stores = [
        *objects["DaskCluster"]["spec"]["worker"]["spec"]["containers"],
        *objects["DaskWorkerGroup"]["spec"]["worker"]["spec"]["containers"],
        _job_manifest(template)["spec"]["template"]["spec"]["containers"][0],
    ]
    for container in stores:
        from_secret = {
            entry["name"]: entry["valueFrom"]["secretKeyRef"]
            for entry in container["env"]
            if "secretKeyRef" in entry.get("valueFrom", {})
        }
        for key in S3_KEYS:
            assert from_secret[key] == {"name": S3_SECRET, "key": key}, (container["name"], key)
    # The scheduler holds no data and gets no keys.
    (scheduler,) = objects["DaskCluster"]["spec"]["scheduler"]["spec"]["containers"]
    assert not {entry["name"] for entry in scheduler.get("env", [])} & S3_KEYS


def test_images_are_the_projects_with_a_placeholder_tag(kustomization, objects):
    assert {image["name"] for image in kustomization["images"]} == set(IMAGES)
    for path in IMAGES.values():
        assert path.is_file(), path
    for kind in ("DaskCluster", "DaskWorkerGroup"):
        for container in _containers(objects[kind]["spec"]):
            name, _, tag = container["image"].partition(":")
            assert name in IMAGES and tag == "TAG", container["image"]


def test_the_helm_values_fit_the_pool_the_server_and_the_releases(
    kustomization, objects, template, server_values, worker_values
):
    worker = worker_values["worker"]
    # The deployments' pool (deployments/prefect.yaml), here of type kubernetes.
    declared = yaml.safe_load((REPO_ROOT / "deployments" / "prefect.yaml").read_text())
    assert worker["config"]["workPool"] == declared["definitions"]["work_pools"]["process"]["name"]
    assert worker["config"]["type"] == "kubernetes"
    # The chart mounts the pool's template from the ConfigMap the kustomization generates.
    (generator,) = kustomization["configMapGenerator"]
    assert worker["config"]["baseJobTemplate"]["existingConfigMapName"] == generator["name"]
    assert generator["files"] == [f"baseJobTemplate.json={TEMPLATE.name}"]
    assert generator["options"]["disableNameSuffixHash"] is True
    # One API URL: the server chart's Service (prefect-server, port 4200) in the namespace.
    api_url = f"http://prefect-server.{NAMESPACE}.svc.cluster.local:4200/api"
    assert worker["apiConfig"] == "selfHostedServer"
    assert worker["selfHostedServerApiConfig"]["apiUrl"] == api_url
    for kind in ("DaskCluster", "DaskWorkerGroup"):
        for container in objects[kind]["spec"]["worker"]["spec"]["containers"]:
            env = {entry["name"]: entry.get("value") for entry in container["env"]}
            assert env["PREFECT_API_URL"] == api_url
    # The server and the worker run the Prefect release of constraints.txt, on the images' Python.
    prefect = _pins()["prefect"]
    python = re.search(r"^FROM python:(\d+\.\d+)", IMAGES["aml-smear-cpu"].read_text(), re.M)[1]
    assert server_values["global"]["prefect"]["image"]["prefectTag"] == f"{prefect}-python{python}"
    assert worker["image"]["prefectTag"] == f"{prefect}-python{python}-kubernetes"


def test_the_readmes_say_it_was_not_run_here():
    assert "**Not run here.**" in (KUBERNETES / "README.md").read_text()
    section = (INFRA / "README.md").read_text().split("## Kubernetes", 1)[1].split("\n## ", 1)[0]
    assert "kubernetes/README.md" in section and "**Not run here**" in section


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_builds_the_recipe_offline(tmp_path, template):
    # An empty kubeconfig: kustomize needs no cluster, and this makes sure none is asked.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("")
    built = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES)],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    rendered = {d["kind"]: d for d in yaml.safe_load_all(built.stdout) if d}
    assert set(rendered) == {"Namespace", "ConfigMap", "DaskCluster", "DaskWorkerGroup"}
    for kind, document in rendered.items():
        if kind != "Namespace":
            assert document["metadata"]["namespace"] == NAMESPACE, kind
    configmap = rendered["ConfigMap"]
    assert configmap["metadata"]["name"] == "aml-smear-base-job-template"
    assert json.loads(configmap["data"]["baseJobTemplate.json"]) == template
    images = {
        c["image"]
        for kind in ("DaskCluster", "DaskWorkerGroup")
        for c in _containers(rendered[kind])
    }
    assert images == {"aml-smear-cpu:TAG", "aml-smear-gpu:TAG"}
