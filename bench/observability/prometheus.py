"""A real Prometheus (Debian's package) scraping the stack's /metrics URLs, for one measurement at a time."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import yaml

from devstack.procs import Proc, free_port, wait_until


def config(metrics_urls: dict[str, str], interval_s: float) -> dict[str, object]:
    jobs = [
        {
            "job_name": f"haloweave-{service}",
            "metrics_path": urlsplit(url).path,
            "static_configs": [{"targets": [urlsplit(url).netloc]}],
        }
        for service, url in sorted(metrics_urls.items())
    ]
    interval = f"{interval_s:g}s"
    return {"global": {"scrape_interval": interval, "scrape_timeout": interval}, "scrape_configs": jobs}


def targets_up(url: str) -> dict[str, str]:
    targets = httpx.get(f"{url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
    return {target["labels"]["job"]: target["health"] for target in targets}


@contextmanager
def scraping(metrics_urls: dict[str, str], workdir: Path, interval_s: float) -> Iterator[str]:
    """Prometheus scraping every URL each `interval_s`, from its first successful scrape of all of them until exit."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit("prometheus is not installed: install Debian's prometheus package (make setup)")
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config(metrics_urls, interval_s)))
    port = free_port()
    argv = [
        binary,
        f"--config.file={path}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    proc = Proc("prometheus", argv, {}, workdir / "prometheus.log")
    url = f"http://127.0.0.1:{port}"
    try:
        jobs = {f"haloweave-{service}": "up" for service in metrics_urls}
        wait_until(lambda: targets_up(url) == jobs, 30, "every target scraped", proc)
        yield url
    finally:
        proc.stop()
