"""Where ``python -m serving.cli serve`` puts streaming state, decided and set up before Ray
starts: a local Redis of its own, the server at a given URL, or the replicas' memory; on a
cluster at RAY_ADDRESS a URL or memory. Ray is never started here (``_serve`` is replaced)."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest
import redis
import yaml

from seqcore.config import ConfigError
from serving import cli as serve_cli
from serving.cli import DEFAULT_CONFIG, StreamState, app_args, stream_state
from serving.config import REDIS_URL_ENV, serving_config
from serving.redis_server import LocalRedis


def _decide(shared: bool = False, config_args: dict | None = None, **flags) -> StreamState:
    cli = argparse.Namespace(
        config="serve.yaml", model_name=None, version=None, alias=None, tracking_uri=None,
        stream_store=flags.get("stream_store"), redis_url=flags.get("redis_url"),
    )  # fmt: skip
    args = app_args({"args": {"model_name": "m", **(config_args or {})}}, cli)
    return stream_state(serving_config(args).streaming, cli, shared)


@pytest.fixture(autouse=True)
def _no_cluster_or_url(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    monkeypatch.delenv("SEQOPS_REDIS_SERVER", raising=False)


def test_the_url_comes_from_the_flag_then_the_config_then_the_variable(monkeypatch):
    flag, config, env = "redis://:a@flag:1/0", "redis://:b@config:2/0", "redis://:c@env:3/0"
    monkeypatch.setenv(REDIS_URL_ENV, env)
    assert _decide(config_args={"redis_url": config}, redis_url=flag) == StreamState(
        "redis", flag, "--redis-url"
    )
    assert _decide(config_args={"redis_url": config}) == StreamState(
        "redis", config, "redis_url in serve.yaml"
    )
    assert _decide() == StreamState("redis", env, f"${REDIS_URL_ENV}")
    monkeypatch.delenv(REDIS_URL_ENV)
    assert _decide().kind == "local"  # nothing given: the command starts one
    assert _decide(stream_store="redis").kind == "local"


def test_memory_is_chosen_by_the_flag_or_the_config_whatever_the_url(monkeypatch):
    monkeypatch.setenv(REDIS_URL_ENV, "redis://:c@env:3/0")
    chosen = _decide(stream_store="memory", redis_url="redis://:a@flag:1/0")
    assert chosen.kind == "memory" and chosen.url is None
    assert chosen.describe() == "in each stream replica's memory (--stream-store memory)"
    chosen = _decide(config_args={"stream_store": "memory"}, shared=True)
    assert (
        chosen.describe() == "in each stream replica's memory (stream_store: memory in serve.yaml)"
    )


def test_a_shared_cluster_needs_a_url_or_memory(monkeypatch):
    with pytest.raises(ConfigError) as refused:
        _decide(shared=True)
    message = str(refused.value)
    assert "\n" not in message and "RAY_ADDRESS" in message
    assert "--redis-url" in message and REDIS_URL_ENV in message
    assert "--stream-store memory" in message and "infra/redis/redis.yaml" in message
    assert _decide(shared=True, stream_store="memory").kind == "memory"
    monkeypatch.setenv(REDIS_URL_ENV, "redis://:c@seqops-redis:6379/0")
    assert _decide(shared=True).url == "redis://:c@seqops-redis:6379/0"


# The command itself, with the registry lookup and everything from Ray on replaced.


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def command(monkeypatch, capsys):
    """Run ``serve`` up to Ray: returns (exit code, stdout, stderr, what _serve was given)."""
    import serving.registry

    monkeypatch.setattr(serving.registry, "resolve_version", lambda ref: 1)

    def run(*argv: str, serve=None):
        given: dict = {}

        def fake_serve(cli, app, config, http, shared, direct, proxy):
            given.update(config=config, shared=shared, proxy=proxy)
            return serve(config) if serve else 0

        monkeypatch.setattr(serve_cli, "_serve", fake_serve)
        code = serve_cli.main(["serve", "--model-name", "m", "--port", str(_free_port()), *argv])
        out, err = capsys.readouterr()
        return code, out, err, given

    return run


def _ping(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    except redis.ConnectionError:
        return False


def test_serve_starts_a_local_redis_from_the_config_and_stops_it_after_serve(
    command, tmp_path: Path
):
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["applications"][0]["args"].update(redis_max_memory_mb=32, redis_eviction_policy="allkeys-lru")  # fmt: skip
    config_file = tmp_path / "serve.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    seen: dict = {}

    def serve(config):  # while "Serve" runs: the replicas' URL answers, set as configured
        url = seen["url"] = config.streaming.redis_url
        assert config.streaming.store_url() == url
        client = redis.Redis.from_url(url)
        seen["maxmemory"] = client.config_get("maxmemory")["maxmemory"]
        seen["policy"] = client.config_get("maxmemory-policy")["maxmemory-policy"]
        client.close()
        return 0

    code, out, err, given = command("--config", str(config_file), serve=serve)
    assert code == 0, err
    url = seen["url"]
    port = url.rsplit(":", 1)[1].split("/")[0]
    assert url.startswith("redis://:") and url.endswith("/0")
    assert (seen["maxmemory"], seen["policy"]) == (str(32 * 1024**2), "allkeys-lru")
    line = (
        f"streaming state: Redis at 127.0.0.1:{port} (local, maxmemory 32 MB, policy allkeys-lru)"
    )
    assert line in out.splitlines(), out
    password = url.split(":")[2].split("@")[0]
    assert password not in out + err
    assert not _ping(url)  # stopped with the command


def test_the_local_redis_stops_when_serving_is_interrupted(command):
    seen: dict = {}

    def serve(config):
        seen["url"] = config.streaming.redis_url
        assert _ping(seen["url"])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        command(serve=serve)
    assert not _ping(seen["url"])


def test_no_redis_binary_is_one_line_before_ray(command, monkeypatch, tmp_path):
    monkeypatch.setenv("SEQOPS_REDIS_SERVER", str(tmp_path / "no-such-server"))
    code, out, err, given = command()
    assert code == 1 and not given
    assert err.strip().splitlines() == [
        f"error: streaming state: SEQOPS_REDIS_SERVER={tmp_path / 'no-such-server'} is not "
        "an executable file"
    ]


def test_a_given_url_is_used_as_is_and_checked_on_a_local_cluster(command, monkeypatch):
    with LocalRedis(max_memory_mb=16) as server:
        code, out, err, given = command("--redis-url", server.url)
        assert code == 0, err
        assert given["config"].streaming.redis_url == server.url
        assert f"streaming state: Redis at 127.0.0.1:{server.port}/0 (--redis-url)" in out
        # From the variable: handed to the replicas in the args, so every node uses it.
        monkeypatch.setenv(REDIS_URL_ENV, server.url)
        code, out, err, given = command()
        assert code == 0 and given["config"].streaming.redis_url == server.url
        assert f"(${REDIS_URL_ENV})" in out
        assert server.password not in out + err
        wrong = server.url.replace(server.password, "not-the-password")
        code, out, err, given = command("--redis-url", wrong)
    assert code == 1 and not given
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: streaming state: no Redis answers at 127.0.0.1:{server.port}/0")
    assert "AuthenticationError" in line and "not-the-password" not in line
    code, out, err, given = command("--redis-url", f"redis://:pw@127.0.0.1:{_free_port()}/0")
    assert code == 1 and "ConnectionError" in err and ":pw@" not in err


def test_a_shared_cluster_is_refused_without_a_url_and_served_with_memory(command, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # never reached
    code, out, err, given = command()
    assert code == 2 and not given
    (line,) = err.strip().splitlines()
    assert line.startswith("error: streaming state: on the cluster at RAY_ADDRESS")
    code, out, err, given = command("--stream-store", "memory")
    assert code == 0 and given["shared"] and given["config"].streaming.stream_store == "memory"
    assert "streaming state: in each stream replica's memory (--stream-store memory)" in out
    # A cluster's own name for its server is not checked from here: the replicas reach it.
    code, out, err, given = command("--redis-url", "redis://:pw@seqops-redis:6379/0")
    assert code == 0 and "Redis at seqops-redis:6379/0 (--redis-url)" in out


def test_a_bad_url_is_a_config_error_that_hides_it(command, monkeypatch):
    monkeypatch.setenv(REDIS_URL_ENV, "http://user:secret-pw@host:1/")
    code, out, err, given = command()
    assert code == 2 and not given
    (line,) = err.strip().splitlines()
    assert "redis_url" in line and "secret-pw" not in line
    code, out, err, given = command("--redis-url", "redis://:secret-pw@host:port/0")
    assert code == 2 and "not a valid" in err and "secret-pw" not in err


def test_proxies_go_where_the_config_says_unless_the_command_line_moves_them(command):
    """Several Ray nodes on one host (the team profile) share its ports: one proxy, HeadOnly."""
    assert command("--stream-store", "memory")[3]["proxy"] == "EveryNode"  # the config's
    moved = command("--stream-store", "memory", "--proxy-location", "HeadOnly")
    assert moved[0] == 0 and moved[3]["proxy"] == "HeadOnly"
