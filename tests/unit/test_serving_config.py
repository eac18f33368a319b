"""The online application's configuration: args from a command line, user_config on top."""

from __future__ import annotations

import pytest

from seqcore.config import ConfigError
from serving.config import (
    Batching,
    Limits,
    Streaming,
    apply_user_config,
    serving_config,
    split_user_config,
)


def test_string_args_become_typed_sections():
    config = serving_config(
        {"model_name": "m", "version": "3", "max_batch_size": "8", "shadow": "true", "challenger_alias": "challenger",
         "batch_wait_timeout_s": "0", "tracking_uri": "sqlite:///x.db"}
    )  # fmt: skip
    assert config.model.uri == "models:/m/3" and config.model.alias is None
    assert config.batching == Batching(max_batch_size=8, batch_wait_timeout_s=0.0)
    assert config.rollout.shadow is True and config.limits == Limits()
    assert config.challenger is not None and config.challenger.uri == "models:/m@challenger"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"model_name": "m", "max_batch_size": "many"}, "max_batch_size='many': expected int"),
        ({"model_name": "m", "max_batch_size": 0}, "max_batch_size=0: must be >= 1"),
        ({"model_name": "m", "order_policy": "shuffle"}, "order_policy='shuffle'"),
        ({"model_name": "m", "colour": "red"}, "unknown arg(s) colour"),
        ({"alias": "champion"}, "model_name=None: required"),
    ],
)
def test_bad_args_name_the_key_and_value(args, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        serving_config(args)


def test_the_ingress_user_config_splits_into_limits_and_batching():
    limits, batching = split_user_config(
        {"max_body_bytes": 1000, "max_batch_size": 4, "order_policy": "reject"}, Limits, Batching
    )
    assert limits == {"max_body_bytes": 1000, "order_policy": "reject"}
    assert batching == {"max_batch_size": 4}
    assert split_user_config(None, Limits, Batching) == [{}, {}]
    updated = apply_user_config(Batching(), batching)
    assert updated == Batching(max_batch_size=4)


def test_an_unknown_user_config_key_is_refused_naming_every_allowed_key():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) max_entities for Limits/Batching"):
        split_user_config({"max_entities": 5}, Limits, Batching)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) max_batch_size for Streaming; "):
        apply_user_config(Streaming(), {"max_batch_size": 5})


def test_a_bad_user_config_value_names_its_key():
    with pytest.raises(ConfigError, match=r"user_config\.batch_wait_timeout_s=-1"):
        apply_user_config(Batching(), {"batch_wait_timeout_s": -1})


def test_serve_refuses_a_port_in_use_in_one_line_before_ray_starts(capsys):
    import socket

    from serving.cli import main

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code = main(["serve", "--model-name", "m", "--port", str(port),
                     "--tracking-uri", "sqlite:////nonexistent/none.db"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1, err
    assert f"127.0.0.1:{port}" in err[0] or "not found" in err[0], err


def test_streaming_store_and_redis_args(monkeypatch):
    from serving.config import REDIS_URL_ENV

    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    config = serving_config({"model_name": "m", "stream_store": "redis", "redis_max_memory_mb": "64",
                             "redis_eviction_policy": "allkeys-lru", "redis_url": "redis://:pw@h:1/0"})  # fmt: skip
    streaming = config.streaming
    assert (streaming.redis_max_memory_mb, streaming.redis_eviction_policy) == (64, "allkeys-lru")
    assert streaming.store_url() == "redis://:pw@h:1/0"
    assert Streaming().store_url() is None  # auto without a URL: the replicas' memory
    monkeypatch.setenv(REDIS_URL_ENV, "redis://:env@h:2/0")
    assert Streaming().store_url() == "redis://:env@h:2/0"
    assert streaming.store_url() == "redis://:pw@h:1/0"  # the args' URL before the variable
    assert Streaming(stream_store="memory").store_url() is None
    monkeypatch.delenv(REDIS_URL_ENV)
    with pytest.raises(ConfigError, match=r"stream_store='redis': needs redis_url or \$SEQOPS"):
        Streaming(stream_store="redis").store_url()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"stream_store": "disk"}, "stream_store='disk': expected one of"),
        ({"redis_eviction_policy": "noeviction"}, "redis_eviction_policy='noeviction'"),
        ({"redis_max_memory_mb": "0"}, "redis_max_memory_mb=0: must be >= 1"),
    ],
)
def test_bad_streaming_args_name_the_key(args, message):
    with pytest.raises(ConfigError, match=message):
        serving_config({"model_name": "m", **args})


def test_a_bad_redis_url_is_refused_without_echoing_it():
    with pytest.raises(ConfigError) as refused:
        serving_config({"model_name": "m", "redis_url": "http://:secret@h:1/"})
    assert "redis_url" in str(refused.value) and "secret" not in str(refused.value)
