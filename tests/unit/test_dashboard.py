"""The Grafana dashboard (infra/grafana/seqops-dashboard.json) draws every metric the README
documents, and only those, with PromQL that parses."""

from __future__ import annotations

import json
import re

import promql_parser
import pytest

from seqcore.profile import PROBABILITY_EDGES
from tests.conftest import REPO

DASHBOARD = REPO / "infra" / "grafana" / "seqops-dashboard.json"
# What Grafana puts in place of its variables before a query goes out.
VARIABLES = {"$__rate_interval": "1m", "$application": "seqops"}


def _panels() -> list[dict]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def _exprs() -> list[str]:
    return [t["expr"] for p in _panels() for t in p["targets"]]


def _documented() -> set[str]:
    return set(re.findall(r"`(ray_seqops_[a-z_]+)`", (REPO / "README.md").read_text()))


@pytest.mark.parametrize("expr", _exprs())
def test_every_query_parses_as_promql(expr):
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    promql_parser.parse(expr)  # raises on a syntax error


def test_the_dashboard_draws_every_documented_metric_and_no_other():
    drawn = set()
    for expr in _exprs():
        for name in re.findall(r"ray_seqops_[a-z_]+", expr):
            drawn.add(re.sub(r"_(bucket|sum|count)$", "", name))
    assert drawn == _documented(), sorted(drawn ^ _documented())


def test_panels_have_unique_ids_the_datasource_variable_and_do_not_overlap():
    raw = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in raw["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in raw["templating"]["list"]} == {"datasource", "application"}
    cells = set()
    for panel in raw["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, panel["title"]
        cells |= mine


def test_bucket_bounds_the_queries_name_are_the_histograms_own():
    for expr in _exprs():
        for bound in re.findall(r'ray_seqops_score_bucket\{[^}]*le="([^"]+)"', expr):
            assert float(bound) in PROBABILITY_EDGES
