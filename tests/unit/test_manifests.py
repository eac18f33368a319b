"""The Kubernetes manifests in infra/ validate offline, as written, and agree with each other.

Built-in kinds are checked by ``kubernetes-validate`` against the Kubernetes OpenAPI schemas
of ``K8S_VERSION`` in strict mode (an unknown field is an error, as the API server's strict
field validation makes it); KubeRay's kinds against the CRD schemas of the KubeRay release in
``infra/schemas/`` (``scripts/kuberay_schemas.py``), made strict the same way: the API server
would silently prune a misspelt field of a CRD, so here every object that lists its
properties refuses others.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
K8S_VERSION = "1.33.0"
KUBERAY = "v1.7.0"
NOT_MANIFESTS = {INFRA / "prometheus" / "scrape.yaml"}  # Prometheus's own config format


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(INFRA.rglob("*.yaml")):
        if path in NOT_MANIFESTS:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                meta = doc["metadata"]
                name = meta.get("name") or meta["generateName"]
                docs.append((f"{path.relative_to(REPO)}:{doc['kind']}/{name}", doc))
    return docs


DOCS = _documents()


def _strict(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` on every object that lists its
    properties and does not keep unknown fields (``x-kubernetes-preserve-unknown-fields``)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _crd_schema(kind: str) -> dict[str, Any]:
    raw = json.loads((INFRA / "schemas" / f"kuberay-{KUBERAY}" / f"{kind}.json").read_text())
    return _strict(copy.deepcopy(raw))


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in DOCS if doc["kind"] == kind]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container of a manifest, wherever its pod templates are."""
    found = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    found.extend(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    return found


def test_every_manifest_is_found():
    kinds = {doc["kind"] for _, doc in DOCS}
    assert {"RayCluster", "RayService", "RayJob", "Deployment", "Service", "NetworkPolicy",
            "ConfigMap"} <= kinds  # fmt: skip


@pytest.mark.parametrize("name,doc", DOCS, ids=[name for name, _ in DOCS])
def test_a_manifest_validates_against_its_schema(name, doc):
    if doc["apiVersion"].startswith("ray.io/"):
        assert doc["apiVersion"] == "ray.io/v1", f"{name}: KubeRay {KUBERAY} serves ray.io/v1"
        validator = jsonschema.Draft7Validator(_crd_schema(doc["kind"]))
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        assert not errors, "\n".join(
            f"{name}: {'.'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in errors
        )
    else:
        import kubernetes_validate

        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {'.'.join(map(str, exc.path))}: {exc.message[:300]}")


def test_a_misspelt_field_is_caught_in_a_kuberay_kind():
    """The strict CRD schema is what catches it: the API server would drop it silently."""
    [cluster] = _by_kind("RayCluster")
    broken = copy.deepcopy(cluster)
    broken["spec"]["headGroupSpec"]["rayStartParam"] = {}  # for rayStartParams
    validator = jsonschema.Draft7Validator(_crd_schema("RayCluster"))
    assert any("rayStartParam" in e.message for e in validator.iter_errors(broken))


@pytest.mark.parametrize("name,doc", DOCS, ids=[name for name, _ in DOCS])
def test_images_are_pinned(name, doc):
    for container in _containers(doc):
        image = container["image"]
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and not tag.startswith("latest") or "@sha256:" in image, f"{name}: {image}"


def test_the_ray_pods_reach_mlflow_where_its_service_listens():
    [service] = [d for d in _by_kind("Service") if d["metadata"]["name"] == "mlflow"]
    port = service["spec"]["ports"][0]["port"]
    [deployment] = [d for d in _by_kind("Deployment") if d["metadata"]["name"] == "mlflow"]
    args = " ".join(_containers(deployment)[0]["args"])
    assert f"--port={port}" in args
    # MLflow 3 answers a Host it does not know with 403: the in-cluster names must be allowed.
    hosts = re.search(r"--allowed-hosts=(\S+)", args).group(1).split(",")
    assert f"mlflow:{port}" in hosts
    ray_kinds = [*_by_kind("RayCluster"), *_by_kind("RayService"), *_by_kind("RayJob")]
    for doc in ray_kinds:
        for container in _containers(doc):
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert env.get("MLFLOW_TRACKING_URI") == f"http://mlflow:{port}", doc["kind"]


def test_the_rayservice_runs_the_repositorys_serve_config():
    """One serve config: the RayService's applications are serving/serve_config.yaml's, only
    the HTTP host differs (the pod network, fenced by the NetworkPolicy)."""
    [service] = _by_kind("RayService")
    deployed = yaml.safe_load(service["spec"]["serveConfigV2"])
    ours = yaml.safe_load((REPO / "serving" / "serve_config.yaml").read_text())
    assert deployed["applications"] == ours["applications"]
    assert deployed["http_options"] == {**ours["http_options"], "host": "0.0.0.0"}


def test_every_secret_and_configmap_a_pod_reads_is_documented_or_defined():
    defined = {d["metadata"]["name"] for d in [*_by_kind("ConfigMap"), *_by_kind("Secret")]}
    readme = (INFRA / "README.md").read_text()
    for name, doc in DOCS:
        for container in _containers(doc):
            refs = [
                (e["valueFrom"].get("secretKeyRef") or e["valueFrom"].get("configMapKeyRef"))[
                    "name"
                ]
                for e in container.get("env", [])
                if "valueFrom" in e
                and ("secretKeyRef" in e["valueFrom"] or "configMapKeyRef" in e["valueFrom"])
            ]
            refs += [
                (src.get("secretRef") or src.get("configMapRef"))["name"]
                for src in container.get("envFrom", [])
            ]
            for ref in refs:
                assert ref in defined or f"`{ref}`" in readme, f"{name}: {ref} is nowhere"


def test_the_image_is_built_from_the_set_up_requirements():
    dockerfile = (REPO / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", dockerfile, re.M).group(1)
    assert ":" in base and "latest" not in base
    torch = dockerfile.index("requirements/torch-cpu.txt")
    project = dockerfile.index('".[cluster]"')
    assert torch < project  # the CPU torch first, as scripts/setup.sh installs it


def _profile_env() -> dict[str, str]:
    """The environment ``scripts/cluster.sh up`` exports (.cluster/env), ports at their
    defaults."""
    script = (REPO / "scripts" / "cluster.sh").read_text()
    defaults = dict(re.findall(r"^(\w+_PORT)=\$\{SEQOPS_\w+:-(\d+)\}", script, re.M))
    block = script.split('cat > "$STATE/env" <<EOF', 1)[1].split("\nEOF", 1)[0]
    env = {}
    for name, value in re.findall(r"^export (\w+)=(.*)$", block, re.M):
        for key, port in defaults.items():
            value = value.replace(f"${key}", port)
        env[name] = value.strip("'")
    return env


def test_the_team_profile_speaks_to_its_services_as_the_manifests_do():
    """The same names and ports on one machine (scripts/cluster.sh) and on Kubernetes."""
    env = _profile_env()
    [service] = [d for d in _by_kind("Service") if d["metadata"]["name"] == "mlflow"]
    assert env["MLFLOW_TRACKING_URI"].endswith(f":{service['spec']['ports'][0]['port']}")
    [cluster] = _by_kind("RayCluster")
    head = _containers(cluster)[0]
    gcs = next(p["containerPort"] for p in head["ports"] if p["name"] == "gcs")
    assert env["RAY_ADDRESS"].endswith(f":{gcs}")
    # Every variable the profile gives the stages and the Ray nodes, the Ray pods get too:
    # set inline, from a Secret, or from the storage ConfigMap.
    [storage] = [d for d in _by_kind("ConfigMap") if d["metadata"]["name"] == "seqops-storage"]
    pod_env = {e["name"] for c in _containers(cluster) for e in c.get("env", [])}
    pod_env |= set(storage["data"])
    helpers = {"RAY_ADDRESS", "SEQOPS_DATA_STORE"}  # the driver's side
    assert set(env) - helpers <= pod_env, set(env) - helpers - pod_env
