"""What every service's `__main__` does around its server: stop on SIGTERM/SIGINT, expose `/metrics`."""

from __future__ import annotations

import asyncio
import signal

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT, so a service drains and stops cleanly (Kubernetes sends SIGTERM)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def start_metrics(port: int, listen: str, registry: CollectorRegistry = REGISTRY) -> None:
    """Serves `/metrics` on `port`: on loopback when the service itself listens on loopback, else on every address."""
    if port:
        start_http_server(port, addr="127.0.0.1" if listen.startswith("127.") else "0.0.0.0", registry=registry)
