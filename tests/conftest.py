"""Shared fixtures. Ray and MLflow fixtures live in tests/integration/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def default_params() -> Params:
    """The repository's params.yaml, parsed and validated."""
    return load_params(REPO / "params.yaml")
