"""A real Prometheus (Debian's package) scraping given /metrics URLs on loopback, started and stopped by its own pid.

The observability test and bench both run one; job names are those of deploy/prometheus/prometheus.yml and of the
ServiceMonitor (`haloweave-<service>`), so the dashboard's and the alerts' queries apply unchanged.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from devstack.procs import Proc, free_port, wait_until


def job_name(service: str) -> str:
    return f"haloweave-{service}"


def scrape_config(
    metrics_urls: dict[str, str],
    interval_s: float,
    rule_files: Sequence[Path] = (),
    alertmanagers: Sequence[str] = (),
) -> dict[str, Any]:
    """Scrapes and rule evaluation every `interval_s`; firing alerts go to `alertmanagers` (host:port), as the
    `alerting:` section of deploy/prometheus/prometheus.yml sends them to compose's Alertmanager."""
    jobs = [
        {
            "job_name": job_name(service),
            "metrics_path": urlsplit(url).path,
            "static_configs": [{"targets": [urlsplit(url).netloc]}],
        }
        for service, url in sorted(metrics_urls.items())
    ]
    interval = f"{interval_s:g}s"
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "scrape_configs": jobs,
    }
    if rule_files:
        config["rule_files"] = [str(path) for path in rule_files]
    if alertmanagers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
    return config


def targets_up(url: str) -> dict[str, str]:
    """Each scrape job's health, by job name."""
    targets = httpx.get(f"{url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
    return {target["labels"]["job"]: target["health"] for target in targets}


@contextmanager
def running(
    metrics_urls: dict[str, str],
    workdir: Path,
    interval_s: float,
    rule_files: Sequence[Path] = (),
    alertmanagers: Sequence[str] = (),
) -> Iterator[str]:
    """Prometheus's base URL, once it is ready and every target has been scraped successfully; stopped on exit."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is not installed: install Debian's prometheus package (make setup-test)")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(metrics_urls, interval_s, rule_files, alertmanagers)))
    port = free_port()
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    proc = Proc("prometheus", argv, {}, workdir / "prometheus.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/-/ready", timeout=2).status_code == 200, 30, "prometheus", proc)
        up = {job_name(service): "up" for service in metrics_urls}
        wait_until(lambda: up.items() <= targets_up(url).items(), 30, "every target scraped", proc)
        yield url
    finally:
        proc.stop()
