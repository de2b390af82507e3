"""The Grafana dashboard and its provisioning use the metrics contract of deploy/README.md."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.deploy.deployment_files import DEPLOY, GRAFANA_DASHBOARD, METRICS, ROOT, load_yaml

METRIC = re.compile(r"\bcodeyard_[a-z_]+\b")
SELECTOR_OR_BY = re.compile(r"(?:by|without)\s*\(([^)]*)\)|\{([^}]*)\}")


def panels() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(GRAFANA_DASHBOARD.read_text())["panels"]
    return found


def test_every_query_uses_contract_metrics_and_labels() -> None:
    for panel in panels():
        for target in panel["targets"]:
            expr = target["expr"]
            (metric,) = set(METRIC.findall(expr))
            assert metric in METRICS, (panel["title"], metric)
            for by, selector in SELECTOR_OR_BY.findall(expr):
                labels = {part.split("=")[0].strip("!~ ") for part in (by or selector).split(",")}
                assert labels - {""} <= METRICS[metric], (panel["title"], labels)


def test_the_dashboard_shows_what_the_issue_asks() -> None:
    used = {m for p in panels() for t in p["targets"] for m in METRIC.findall(t["expr"])}
    assert set(METRICS) == used
    titles = " ".join(p["title"] for p in panels()).lower()
    for wanted in ("tasks by state", "work items", "p50", "p99", "tokens", "pending"):
        assert wanted in titles


def test_the_panels_use_the_provisioned_datasource() -> None:
    (source,) = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    for panel in panels():
        assert panel["datasource"]["uid"] == source["uid"]
    provider = load_yaml(DEPLOY / "grafana/provisioning/dashboards/codeyard.yml")["providers"][0]
    mount = f"./deploy/grafana/dashboards:{provider['options']['path']}:ro"
    assert mount in (ROOT / "docker-compose.yml").read_text()


def test_the_readme_lists_the_metrics_contract() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for metric in METRICS:
        assert metric.removesuffix("_bucket") in readme, metric


def test_codeyard_exports_every_metric_the_dashboard_uses() -> None:
    from prometheus_client.metrics import MetricWrapperBase

    from codeyard.observability import metrics

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    exported: dict[str, set[str]] = {}
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            # (the label names of a labelled metric are only on the wrapper, not in samples)
            name, kind, labels = metric._name, metric._type, set(metric._labelnames)
            for suffix in suffixes.get(kind or "", ("",)):
                exported[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    for name, labels in METRICS.items():
        assert name in exported, name
        assert labels == exported[name], name
