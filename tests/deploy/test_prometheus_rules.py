"""The Prometheus configuration and alert rules, checked and unit-tested by promtool (Debian's prometheus package)."""

from __future__ import annotations

from pathlib import Path

from tests.deploy.catalogue import ALERTS, ROOT, alert_rules, metric_catalogue, referenced_metrics
from tests.deploy.tools import require_tool, run

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
HOW = "install Debian's prometheus package (scripts/apt-packages-test.txt; make setup-test)"


def test_scrape_config_and_the_rules_it_loads_are_valid() -> None:
    result = run([require_tool("promtool", HOW), "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_alert_rules_pass_their_unit_tests() -> None:
    # The cases in alerts_test.yml show each alert firing on a failure it is meant for and staying quiet on a healthy
    # system.
    tests = PROMETHEUS_DIR / "tests" / "alerts_test.yml"
    result = run([require_tool("promtool", HOW), "test", "rules", str(tests)], cwd=tests.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_refuses_a_broken_rule(tmp_path: Path) -> None:
    """The check above can fail: a rule with a syntax error is refused, naming the problem."""
    broken = tmp_path / "broken.yml"
    text = ALERTS.read_text().replace("histogram_quantile(0.99, sum by (le)", "histogram_quantile(0.99, sum by (le", 1)
    broken.write_text(text)
    result = run([require_tool("promtool", HOW), "check", "rules", str(broken)])
    assert result.returncode != 0
    assert "parse error" in (result.stdout + result.stderr)


def test_every_alert_reads_only_catalogued_metrics_and_links_a_runbook() -> None:
    catalogue = metric_catalogue()
    required = {"HaloWeaveAggregationLatencyHigh", "HaloWeaveTargetDown", "HaloWeaveInferenceWorkerDown"}
    required |= {"HaloWeaveJobLagGrowing", "HaloWeaveSnapshotFailures"}
    rules = alert_rules()
    assert required <= {rule["alert"] for rule in rules}
    for rule in rules:
        unknown = referenced_metrics(rule["expr"]) - set(catalogue)
        assert not unknown, f"{rule['alert']} reads metrics missing from docs/architecture.md: {unknown}"
        assert rule["labels"]["severity"] in ("warning", "critical")
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert f"## {anchor.replace('-', ' ')}".lower() in (ROOT / "docs" / "cluster.md").read_text().lower()
