"""The Kubernetes manifests of infra/ (no cluster: parsed, and the Redis command run here).

What they promise in their comments: nothing reachable from outside the cluster, each server
admitting only the pods that need it, and passwords only ever from Secrets."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"
RAY_PODS = {"app.kubernetes.io/name": "seqops-ray"}
REDIS_PODS = {"app.kubernetes.io/name": "seqops-redis"}


def _documents() -> list[dict]:
    docs = []
    for path in sorted(INFRA.rglob("*.yaml")):
        docs += [doc | {"_file": path.name} for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


DOCS = _documents()


def _one(kind: str, name: str) -> dict:
    (found,) = [d for d in DOCS if d.get("kind") == kind and d["metadata"]["name"] == name]
    return found


def _pod_templates() -> dict[str, dict]:
    """Every pod template: the Deployments' and the RayCluster's head and worker groups."""
    templates = {}
    for doc in DOCS:
        if doc.get("kind") == "Deployment":
            templates[doc["metadata"]["name"]] = doc["spec"]["template"]
        elif doc.get("kind") == "RayCluster":
            spec = doc["spec"]
            templates["ray-head"] = spec["headGroupSpec"]["template"]
            for group in spec["workerGroupSpecs"]:
                templates[f"ray-{group['groupName']}"] = group["template"]
    return templates


def test_every_service_is_cluster_internal():
    services = [d for d in DOCS if d.get("kind") == "Service"]
    assert {s["metadata"]["name"] for s in services} >= {"mlflow", "seqops-redis"}
    assert all(s["spec"].get("type", "ClusterIP") == "ClusterIP" for s in services)
    raycluster = _one("RayCluster", "seqops")
    assert raycluster["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"


def test_every_pod_is_fenced_by_a_network_policy():
    policies = [d for d in DOCS if d.get("kind") == "NetworkPolicy"]
    selected = [p["spec"]["podSelector"]["matchLabels"] for p in policies]
    for name, template in _pod_templates().items():
        labels = template["metadata"]["labels"]
        assert any(sel.items() <= labels.items() for sel in selected), name


def test_redis_admits_only_the_ray_pods_on_its_port():
    policy = _one("NetworkPolicy", "seqops-redis")
    assert policy["spec"]["podSelector"] == {"matchLabels": REDIS_PODS}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": RAY_PODS}}]
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    # The labels it names are the ones the pods carry.
    deployment = _one("Deployment", "seqops-redis")
    assert deployment["spec"]["template"]["metadata"]["labels"] == REDIS_PODS
    assert deployment["spec"]["selector"] == {"matchLabels": REDIS_PODS}
    service = _one("Service", "seqops-redis")
    assert service["spec"]["selector"] == REDIS_PODS
    assert [p["port"] for p in service["spec"]["ports"]] == [6379]
    for name, template in _pod_templates().items():
        if name.startswith("ray-"):
            assert template["metadata"]["labels"] == RAY_PODS, name


def _redis_container() -> dict:
    (container,) = _one("Deployment", "seqops-redis")["spec"]["template"]["spec"]["containers"]
    return container


def test_redis_password_comes_from_the_secret_and_nothing_is_persisted():
    container = _redis_container()
    env = {e["name"]: e for e in container["env"]}
    assert env["REDIS_PASSWORD"]["valueFrom"] == {
        "secretKeyRef": {"name": "seqops-redis", "key": "password"}
    }
    assert "value" not in env["REDIS_PASSWORD"]
    (script,) = container["args"]
    command = script.strip().splitlines()[-1].split()
    assert command[:3] == ["exec", "redis-server", "--requirepass"]
    assert command[3] == '"$REDIS_PASSWORD"'  # the variable, never a literal
    flags = dict(zip(command[2::2], command[3::2], strict=True))
    assert flags["--maxmemory-policy"] == "volatile-lru"
    assert flags["--save"] == '""' and flags["--appendonly"] == "no"
    # maxmemory leaves the server room under its container's memory limit
    limits = container["resources"]["limits"]
    assert flags["--maxmemory"] == "1gb" and limits["memory"] == "1536Mi" and "cpu" in limits


def test_ray_pods_read_the_redis_url_from_the_secret_the_service_answers():
    secret = _one("Secret", "seqops-redis")
    url = urlsplit(secret["stringData"]["redis-url"])
    assert (url.scheme, url.hostname, url.port, url.path) == ("redis", "seqops-redis", 6379, "/0")
    assert url.password == secret["stringData"]["password"]  # the placeholders agree
    for name, template in _pod_templates().items():
        if not name.startswith("ray-"):
            continue
        for container in template["spec"]["containers"]:
            env = {e["name"]: e for e in container["env"]}
            assert env["SEQOPS_REDIS_URL"] == {
                "name": "SEQOPS_REDIS_URL",
                "valueFrom": {"secretKeyRef": {"name": "seqops-redis", "key": "redis-url"}},
            }, name


def test_no_manifest_holds_a_password_inline():
    for doc in DOCS:
        if doc.get("kind") == "Secret":
            assert all(v.startswith(("REPLACE-ME", "redis://:REPLACE-ME@")) for v in
                       doc["stringData"].values()), doc["metadata"]["name"]  # fmt: skip
            continue
        for text in _strings(doc):
            words = text.split()
            for i, word in enumerate(words[:-1]):
                if word in ("--requirepass", "requirepass"):
                    assert words[i + 1] == '"$REDIS_PASSWORD"', text
            assert "redis://:" not in text, doc["metadata"]["name"]


def _strings(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return []


def _run_redis_script(password: str, tmp_path: Path, port: int) -> subprocess.Popen[str]:
    """The manifest's container command, run here with the local redis-server as
    ``redis-server`` on PATH, bound to loopback on ``port``."""
    from serving.redis_server import server_binary

    (tmp_path / "redis-server").symlink_to(server_binary())
    (script,) = _redis_container()["args"]
    script = script.rstrip() + f" --port {port} --bind 127.0.0.1 --dir {tmp_path}"
    env = {**os.environ, "REDIS_PASSWORD": password,
           "PATH": f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    return subprocess.Popen(
        ["sh", "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_the_redis_command_refuses_the_placeholder_and_serves_with_a_password(tmp_path):
    import redis

    placeholder = _one("Secret", "seqops-redis")["stringData"]["password"]
    (tmp_path / "a").mkdir()
    refused = _run_redis_script(placeholder, tmp_path / "a", 1)
    out, _ = refused.communicate(timeout=30)
    assert refused.returncode == 1 and "set a password in the Secret seqops-redis" in out

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "b").mkdir()
    server = _run_redis_script("s3cret-for-the-test", tmp_path / "b", port)
    client = redis.Redis(host="127.0.0.1", port=port, password="s3cret-for-the-test")
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                assert client.ping()
                break
            except redis.ConnectionError:
                assert server.poll() is None, server.communicate()[0]
                assert time.monotonic() < deadline, "the server never answered"
                time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as anonymous:
            anonymous.sendall(b"PING\r\n")
            assert anonymous.recv(100).startswith(b"-NOAUTH")
        config = client.config_get("*")
        assert config["maxmemory"] == str(1024**3)
        assert config["maxmemory-policy"] == "volatile-lru"
        assert config["save"] == "" and config["appendonly"] == "no"
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=30)
