"""Bearer tokens and scopes of the scoring API (serving/auth.py), and where they come from."""

from __future__ import annotations

import pytest

from seqcore.config import ConfigError
from serving.auth import (
    TOKENS_ENV,
    TOKENS_FILE_ENV,
    Authenticator,
    AuthError,
    digest,
    is_loopback,
    load_tokens,
    parse_tokens,
    resolve_auth,
)
from serving.config import serving_config

SCORER = "s" * 24
ADMIN = "a" * 24
DOC = f"""
tokens:
  - name: app
    scopes: [score]
    token: {SCORER}
  - name: ops
    scopes: [admin]
    sha256: {digest(ADMIN)}
"""


@pytest.fixture(autouse=True)
def _no_ambient_tokens(monkeypatch):
    monkeypatch.delenv(TOKENS_ENV, raising=False)
    monkeypatch.delenv(TOKENS_FILE_ENV, raising=False)


def test_scopes_admit_and_refuse_by_name():
    auth = Authenticator(parse_tokens(DOC, "doc"), enabled=True)
    assert auth.check(f"Bearer {SCORER}", "score") == "app"
    assert auth.check(f"bearer {ADMIN}", "score") == "ops"  # admin implies score
    assert auth.check(f"Bearer {ADMIN}", "admin") == "ops"
    with pytest.raises(AuthError) as refused:
        auth.check(f"Bearer {SCORER}", "admin")
    assert refused.value.status == 403 and "'app' lacks the 'admin' scope" in refused.value.error


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer   ", f"Basic {SCORER}", "Bearer wrong-token-of-length"]
)
def test_a_missing_or_unknown_token_is_401(header):
    auth = Authenticator(parse_tokens(DOC, "doc"), enabled=True)
    with pytest.raises(AuthError) as refused:
        auth.check(header, "score")
    assert refused.value.status == 401


def test_disabled_auth_asks_nobody():
    assert Authenticator((), enabled=False).check(None, "admin") is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("tokens: []", "non-empty list under 'tokens:'"),
        ("tokens: [{name: a, scopes: [score]}]", "exactly one of 'sha256' or 'token'"),
        ("tokens: [{name: a, scopes: [root], token: " + "x" * 20 + "}]", "'scopes' must list"),
        ("tokens: [{name: a, scopes: [score], token: short}]", "at least 16 characters"),
        ("tokens: [{name: a, scopes: [score], sha256: abc}]", "'sha256' must be 64 hex"),
        ("tokens: [{name: a, scope: [score]}]", "unknown key(s) scope"),
        (
            f"tokens: [{{name: a, scopes: score, token: {SCORER}}}, "
            f"{{name: a, scopes: score, token: {ADMIN}}}]",
            "the name 'a' is used twice",
        ),
        ("tokens: [", "not valid YAML/JSON"),
    ],
)
def test_a_bad_tokens_document_names_the_entry(text, message):
    with pytest.raises(ConfigError, match="auth: where") as err:
        parse_tokens(text, "where")
    assert message in str(err.value)


def test_tokens_come_from_a_file_or_the_environment(tmp_path, monkeypatch):
    assert load_tokens() == ()
    monkeypatch.setenv(TOKENS_ENV, DOC)
    assert [t.name for t in load_tokens()] == ["app", "ops"]
    path = tmp_path / "tokens.yaml"
    path.write_text(f'{{"tokens": [{{"name": "f", "scopes": ["score"], "token": "{SCORER}"}}]}}')
    monkeypatch.setenv(TOKENS_FILE_ENV, str(path))  # the file wins over the inline variable
    assert [t.name for t in load_tokens()] == ["f"]
    with pytest.raises(ConfigError, match="cannot read the tokens file .*missing"):
        load_tokens(str(tmp_path / "missing"))


def test_auto_turns_on_for_tokens_or_a_public_bind():
    tokens = parse_tokens(DOC, "doc")
    assert resolve_auth("auto", (), "127.0.0.1") is False
    assert resolve_auth("auto", (), None) is False
    assert resolve_auth("auto", tokens, "127.0.0.1") is True
    assert resolve_auth("auto", tokens, "0.0.0.0") is True
    assert resolve_auth("off", (), "0.0.0.0") is False
    with pytest.raises(ConfigError, match="binds 0.0.0.0.*SEQOPS_API_TOKENS_FILE"):
        resolve_auth("auto", (), "0.0.0.0")
    with pytest.raises(ConfigError, match="auth=required"):
        resolve_auth("required", (), "127.0.0.1")
    assert is_loopback("127.0.0.2") and is_loopback("::1") and not is_loopback("10.0.0.1")


def test_the_access_section_is_read_from_flat_args():
    config = serving_config({"model_name": "m", "auth": "required", "tokens_file": "/t.yaml"})
    assert (config.access.auth, config.access.tokens_file) == ("required", "/t.yaml")
    with pytest.raises(ConfigError, match="auth='sometimes'"):
        serving_config({"model_name": "m", "auth": "sometimes"})
    assert serving_config({"model_name": "m", "body_timeout_s": "5"}).limits.body_timeout_s == 5
