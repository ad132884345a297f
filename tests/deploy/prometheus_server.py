"""A real Prometheus (Debian's package) for the tests: scrapes given /metrics URLs every second, loads the project's
alert rules, and answers PromQL over its HTTP API. Started and stopped by its own process id."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from devstack.procs import Proc, free_port, wait_until
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

    def targets_up(self) -> dict[str, str]:
        return {t["labels"]["job"]: t["health"] for t in self.api("targets")["activeTargets"]}

    def scraped_all_since(self, jobs: list[str], since: float, scrapes: int = 2) -> bool:
        """Every job's last scrape is at least `scrapes` intervals after `since` (a rate then sees the change)."""
        samples = self.query('timestamp(up{job=~"haloweave-.*"})')
        stamps = {s["metric"]["job"]: float(s["value"][1]) for s in samples}
        return set(stamps) >= set(jobs) and min(stamps[j] for j in jobs) >= since + scrapes * SCRAPE_INTERVAL_S


def scrape_config(metrics_urls: dict[str, str], rules: Path) -> dict[str, Any]:
    jobs = []
    for service, url in sorted(metrics_urls.items()):
        parts = urlsplit(url)
        jobs.append(
            {
                # The job names of deploy/prometheus/prometheus.yml and of the ServiceMonitor.
                "job_name": f"haloweave-{service}",
                "metrics_path": parts.path,
                "static_configs": [{"targets": [parts.netloc]}],
            }
        )
    interval = f"{SCRAPE_INTERVAL_S}s"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "rule_files": [str(rules)],
        "scrape_configs": jobs,
    }


@contextmanager
def running_prometheus(metrics_urls: dict[str, str], workdir: Path) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is not installed: install Debian's prometheus package (make setup)")
    workdir.mkdir(parents=True, exist_ok=True)
    rules = workdir / "alerts.yml"
    shutil.copyfile(ALERTS, rules)
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(metrics_urls, rules)))
    port = free_port()
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    proc = Proc("prometheus", argv, {}, workdir / "prometheus.log")
    server = Prometheus(f"http://127.0.0.1:{port}")
    try:
        wait_until(lambda: httpx.get(f"{server.url}/-/ready", timeout=2).status_code == 200, 30, "prometheus", proc)
        jobs = [f"haloweave-{service}" for service in metrics_urls]
        wait_until(lambda: all(server.targets_up().get(j) == "up" for j in jobs), 30, "every target up", proc)
        yield server
    finally:
        proc.stop()


def wait_for_scrapes_after(server: Prometheus, jobs: list[str], since: float) -> None:
    wait_until(lambda: server.scraped_all_since(jobs, since), 30, f"scrapes of {jobs} after {time.ctime(since)}")
