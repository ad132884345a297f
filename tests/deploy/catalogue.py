"""What the deployment files promise about metrics: the catalogue in docs/architecture.md, the dashboard's queries and
the alert rules' expressions, read from the files themselves so that the tests check the real ones."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "haloweave.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
SERVICES = ("tracker", "inference", "gateway", "snapshot")


@dataclass(frozen=True)
class MetricSpec:
    service: str
    name: str  # as exported, counters with `_total`
    kind: str  # counter | gauge | histogram
    labels: frozenset[str]

    @property
    def family(self) -> str:
        """The family name prometheus_client's parser reports (counters without `_total`)."""
        return self.name.removesuffix("_total") if self.kind == "counter" else self.name


_METRIC = re.compile(r"`(haloweave_[a-z0-9_]+)(?:\{([a-z_, ]*)\})?`(\s*\((gauge|counter|histogram)\))?")


def metric_catalogue() -> dict[str, MetricSpec]:
    """Parses the `## Metrics` table of docs/architecture.md: | service | metric(s) | type |."""
    text = ARCHITECTURE.read_text()
    section = text.split("## Metrics", 1)[1]
    specs: dict[str, MetricSpec] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] not in SERVICES:
            continue
        service, metrics, row_kind = cells
        for match in _METRIC.finditer(metrics):
            name, labels, _, inline_kind = match.groups()
            kind = inline_kind or ("counter" if name.endswith("_total") else row_kind)
            if kind not in ("counter", "gauge", "histogram"):
                raise ValueError(f"docs/architecture.md: no type for {name} in row {line!r}")
            label_set = frozenset(label.strip() for label in (labels or "").split(",") if label.strip())
            specs[name] = MetricSpec(service, name, kind, label_set)
    if not specs:
        raise ValueError("docs/architecture.md has no metrics table")
    return specs


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL expression) for every target of every panel."""
    queries = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            queries.append((panel["title"], target["expr"]))
    return queries


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def with_range(expr: str, window: str) -> str:
    """Grafana's $__rate_interval made concrete, as Grafana does before sending a query."""
    return expr.replace("$__rate_interval", window)


_NAME = re.compile(r"\bhaloweave_[a-z0-9_]+")


def referenced_metrics(expr: str) -> set[str]:
    """Catalogue names a PromQL expression reads (histogram series map back to their histogram)."""
    # No catalogue name ends in a histogram's series suffixes, so stripping them is unambiguous.
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in _NAME.findall(expr)}


_BINARY = re.compile(r"\s(and|or|unless)\s|==|!=|>=|<=|>|<")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def operands(expr: str) -> list[str]:
    """The operands of the top-level comparisons and set operators of an alert expression, scalars left out.

    `a > 0.01` gives [a]; `a > 5 and deriv(a[10m]) > 0` gives [a, deriv(a[10m])]. Operators inside parentheses,
    braces, brackets or strings (label matchers such as `=~`) belong to an operand and are not split on.
    """
    parts: list[str] = []
    depth = 0
    quote = ""
    start = 0
    i = 0
    expr = expr.strip()
    while i < len(expr):
        char = expr[i]
        if quote:
            if char == "\\":
                i += 2
                continue
            if char == quote:
                quote = ""
        elif char in "\"'`":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0:
            match = _BINARY.match(expr, i)
            if match and not (match.group(0) in (">", "<") and expr[i - 1 : i] == "="):
                parts.append(expr[start:i])
                start = i = match.end()
                continue
        i += 1
    parts.append(expr[start:])
    return [part.strip() for part in parts if part.strip() and not _NUMBER.match(part.strip())]
