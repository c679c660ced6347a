"""The Grafana dashboard in docs/ queries only metrics the gateway exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from gateway.observability import metrics

DASHBOARD = Path(__file__).resolve().parents[3] / "docs" / "grafana-dashboard.json"
METRIC = re.compile(r"\bflgate_[a-z0-9_]+")


def _queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_every_query_names_only_metrics_that_the_gateway_exports() -> None:
    exported = metrics.metric_names()
    queries = _queries()
    assert queries
    for query in queries:
        named = METRIC.findall(query)
        assert named, f"query names no flgate metric: {query}"
        assert set(named) <= exported, f"{query}: {set(named) - exported} not exported"


def test_the_dashboard_shows_every_family_the_gateway_exports() -> None:
    shown = {name for query in _queries() for name in METRIC.findall(query)}
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in shown}
    exported = {re.sub(r"_(bucket|sum|count)$", "", name) for name in metrics.metric_names()}
    assert exported - families == set()
