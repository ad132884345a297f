"""A real Prometheus (Debian's package) for the tests: scrapes given /metrics URLs every second, loads the project's
alert rules, and answers PromQL over its HTTP API. Started and stopped by its own process id."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from devstack import prometheus
from devstack.procs import wait_until
from tests.deploy.catalogue import ALERTS

SCRAPE_INTERVAL_S = 1


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus refused {path} {params}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", f"{expr}: {data['resultType']}"
        result: list[dict[str, Any]] = data["result"]
        return result

    def scraped_all_since(self, jobs: list[str], since: float, scrapes: int = 2) -> bool:
        """Every job's last scrape is at least `scrapes` intervals after `since` (a rate then sees the change)."""
        samples = self.query('timestamp(up{job=~"haloweave-.*"})')
        stamps = {s["metric"]["job"]: float(s["value"][1]) for s in samples}
        return set(stamps) >= set(jobs) and min(stamps[j] for j in jobs) >= since + scrapes * SCRAPE_INTERVAL_S


@contextmanager
def running_prometheus(
    metrics_urls: dict[str, str], workdir: Path, rules: Path | None = None, alertmanagers: Sequence[str] = ()
) -> Iterator[Prometheus]:
    """Scraping and evaluating every second with the project's alert rules loaded (`devstack.prometheus`), or the
    rendered copy of them given as `rules`; firing alerts go to `alertmanagers` (host:port)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if rules is None:
        rules = workdir / "alerts.yml"
        shutil.copyfile(ALERTS, rules)
    with prometheus.running(metrics_urls, workdir, SCRAPE_INTERVAL_S, [rules], alertmanagers) as url:
        yield Prometheus(url)


def wait_for_scrapes_after(server: Prometheus, jobs: list[str], since: float) -> None:
    wait_until(lambda: server.scraped_all_since(jobs, since), 30, f"scrapes of {jobs} after {time.ctime(since)}")
