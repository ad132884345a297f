"""A real Alertmanager (Debian's prometheus-alertmanager) for the tests, with the project's configuration rendered for
a test, and a webhook receiver that records what it is sent. Everything listens on 127.0.0.1; the Alertmanager is
started and stopped by its own process id.

The rendered configuration is deploy/alertmanager/alertmanager.yml with two overrides, both for the test's sake:
- the receiver's `url_file` (the deployments' secret file) becomes `url` pointing at the test's receiver, and
- the route's `group_wait`, `group_interval` and `repeat_interval` become a second or so, where the deployments wait
  minutes to batch companions and avoid noise.
"""

from __future__ import annotations

import json
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

from devstack.procs import Proc, free_port, wait_until
from tests.deploy.catalogue import ROOT

ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
TIMINGS = ("group_wait", "group_interval", "repeat_interval")
HOW = "install Debian's prometheus-alertmanager package (scripts/apt-packages-test.txt; make setup-test)"


def alertmanager_binary() -> str:
    for name in ("prometheus-alertmanager", "alertmanager"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(f"alertmanager is not installed: {HOW}")


def render_config(webhook_url: str, timing: str | None = None) -> dict[str, Any]:
    """The project's Alertmanager configuration with the webhook URL given inline; with `timing`, every route's
    group_wait, group_interval and repeat_interval set to it."""
    config: dict[str, Any] = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            webhook.pop("url_file")
            webhook["url"] = webhook_url
    if timing is not None:
        routes = [config["route"]]
        while routes:
            route = routes.pop()
            for key in TIMINGS:
                if key in route or route is config["route"]:
                    route[key] = timing
            routes += route.get("routes", [])
    return config


@contextmanager
def running_alertmanager(config: dict[str, Any], workdir: Path) -> Iterator[str]:
    """Alertmanager's base URL once it is ready; stopped on exit. One instance: no cluster (gossip) port is opened."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        alertmanager_binary(),
        f"--config.file={path}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # as in the deployments: a single instance, no HA peers to gossip with
        "--log.level=warn",
    ]
    proc = Proc("alertmanager", argv, {}, workdir / "alertmanager.log")
    try:
        wait_until(lambda: httpx.get(f"{url}/-/ready", timeout=2).status_code == 200, 30, "alertmanager", proc)
        yield url
    finally:
        proc.stop()


class Webhook:
    """An HTTP server on loopback that takes Alertmanager's webhook POSTs and queues their JSON bodies."""

    def __init__(self) -> None:
        self.received: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received.put(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # quiet: the test reports what it got
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook", daemon=True)

    def __enter__(self) -> Webhook:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, matches: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        """The first notification (from now on) that `matches`; every notification received is kept in `seen`."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                notification = self.received.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(notification)
            if matches(notification):
                return notification
        summary = [(n.get("status"), n.get("groupLabels")) for n in self.seen]
        raise TimeoutError(f"no {what} within {timeout:.0f} s; notifications so far: {summary}")
