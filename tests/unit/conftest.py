"""Unit tests run without Ray (``make test-unit``): a data stage that would fan its parts
out on a cluster here fails at once instead of quietly starting one (tests/integration
runs the parts on Ray; here set ``data.engine: local``)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_ray_cluster(monkeypatch):
    def refuse(**_: object) -> None:
        raise AssertionError(
            "a unit test started a Ray cluster: set data.engine: local (or move the test "
            "to tests/integration)"
        )

    monkeypatch.setattr("seqcore.ray_connect.connect", refuse)
