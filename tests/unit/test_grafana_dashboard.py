"""docs/grafana-dashboard.json cannot drift from what the server exports:
every metric and every ``by (...)`` label its queries use is one that a
server's metrics (rendezvous/metrics.py, scraped here from a real core)
actually carry."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from test_core import ALICE, BOB, T0, Harness, binding, key

from rendezvous.metrics import ServerMetrics
from rendezvous.stun import Method

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana-dashboard.json"
METRIC = re.compile(r"\bpeerlink_[a-z0-9_]+")
BY = re.compile(r"\bby\s*\(([^)]*)\)")
# Labels Prometheus adds to every scraped sample.
TARGET_LABELS = {"instance", "job"}


def exported() -> dict[str, set[str]]:
    """Sample name -> its label names, from a scrape of a core that has seen
    some traffic and a Redis round trip (labelled families show no sample
    before their first use)."""
    h = Harness()
    h.register(key(1), ALICE, T0)
    h.ask(binding(), BOB, T0)
    h.request(Method.REFRESH, ALICE, T0 + 1)
    metrics = ServerMetrics(lambda: h.core)
    metrics.redis.command("save", 0.001)
    metrics.redis.failed("save", ConnectionError("gone"))
    h.core.stats["dropped: not STUN"] += 1
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_metric_and_label_the_dashboard_queries_is_exported() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    names = exported()
    queries = exprs(dashboard)
    assert len(queries) >= 11
    used = set()
    for title, expr in queries:
        metrics = METRIC.findall(expr)
        assert metrics, f"{title}: {expr} uses no peerlink metric"
        for name in metrics:
            assert name in names, f"{title}: {name} is not exported"
            used.add(name)
        labels = set().union(*(names[name] for name in metrics)) | TARGET_LABELS
        for group in BY.findall(expr):
            for label in (part.strip() for part in group.split(",")):
                assert label in labels, f"{title}: by ({label}) is no label of {metrics}"
    # The families the issue names each have a panel.
    for family in [
        "peerlink_requests_total",
        "peerlink_replies_total",
        "peerlink_drops_total",
        "peerlink_peers_online",
        "peerlink_relay_packets_total",
        "peerlink_relay_bytes_total",
        "peerlink_redis_command_duration_seconds_bucket",
        "peerlink_redis_errors_total",
        "peerlink_event_loop_lag_seconds_bucket",
    ]:
        assert family in used, family


def test_it_is_a_grafana_model_on_a_prometheus_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
    # The quantiles come from histograms, by bucket.
    quantiles = [expr for _, expr in exprs(dashboard) if "histogram_quantile" in expr]
    assert quantiles and all("_bucket" in expr and "le" in expr for expr in quantiles)
