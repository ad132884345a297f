"""A real Prometheus scraping the stack's /metrics URLs, for one measurement at a time (`devstack.prometheus`)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devstack import prometheus


@contextmanager
def scraping(metrics_urls: dict[str, str], workdir: Path, interval_s: float) -> Iterator[str]:
    """Prometheus scraping every URL each `interval_s`, from its first successful scrape of all of them until exit."""
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh TSDB per measurement
    with prometheus.running(metrics_urls, workdir, interval_s) as url:
        yield url
