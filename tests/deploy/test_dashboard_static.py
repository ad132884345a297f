"""The Grafana dashboard and its provisioning, checked offline: every query is valid PromQL (promtool), reads only
metrics of the catalogue in docs/architecture.md, and together the panels cover that catalogue. That the queries return
data from the running services is checked in test_observability_e2e.py."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.deploy.catalogue import (
    ROOT,
    alert_rules,
    dashboard,
    dashboard_queries,
    metric_catalogue,
    referenced_metrics,
    with_range,
)
from tests.deploy.tools import require_tool, run

GRAFANA = ROOT / "deploy" / "grafana"


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses recording rules without a server: one rule per dashboard query.
    rules = [
        {"record": f"haloweave:dashboard_query_{index}", "expr": with_range(expr, "5m")}
        for index, (_, expr) in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run([require_tool("promtool", "install Debian's prometheus package"), "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_queries_read_only_catalogued_metrics_and_cover_the_catalogue() -> None:
    catalogue = metric_catalogue()
    used: set[str] = set()
    for title, expr in dashboard_queries():
        names = referenced_metrics(expr)
        assert names or expr.startswith("up"), f"panel {title!r} reads no Halo Weave metric: {expr}"
        unknown = names - set(catalogue)
        assert not unknown, f"panel {title!r} reads metrics missing from docs/architecture.md: {unknown}"
        used |= names
    for rule in alert_rules():
        used |= referenced_metrics(rule["expr"])
    assert set(catalogue) - used == set(), "catalogued metrics that no panel or alert shows"


def test_no_query_splits_series_by_session() -> None:
    # Sessions are unbounded: a per-session series would explode Prometheus' memory.
    for title, expr in dashboard_queries():
        grouping = " ".join(re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr))
        matchers = " ".join(re.findall(r"\{([^}]*)\}", expr))
        assert "session" not in grouping + matchers, f"panel {title!r}: {expr}"


def test_headline_panels_show_latency_quantiles() -> None:
    for metric in (
        "haloweave_tracker_aggregation_seconds",
        "haloweave_inference_time_to_first_token_seconds",
        "haloweave_inference_inter_token_latency_seconds",
    ):
        quantiles = [expr for _, expr in dashboard_queries() if f"{metric}_bucket" in expr]
        assert {q.split(",", 1)[0] for q in quantiles} >= {"histogram_quantile(0.5", "histogram_quantile(0.99"}
    # The headline comes first.
    assert dashboard_queries()[0][0] == "Tracker attention aggregation latency"


def test_dashboard_is_provisioned_with_the_datasource_it_names() -> None:
    board = dashboard()
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uids = {source["uid"] for source in datasources["datasources"]}
    panels = [panel for panel in board["panels"] if panel["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["datasource"]["uid"] in uids, panel["title"]
        assert all(target["datasource"]["uid"] in uids for target in panel["targets"])
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "haloweave.yml").read_text())
    # docker-compose.yml mounts deploy/grafana/dashboards at this path.
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
