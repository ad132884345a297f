"""Operators are told: a lost inference worker reaches the operators' webhook, and so does its recovery.

Real binaries throughout: the inference service (its Ray driver, one worker actor with the real model) and its Redis,
started by devstack; Debian's Prometheus scraping it every second with the project's alert rules; Debian's
Alertmanager with the project's configuration (deploy/alertmanager/alertmanager.yml) sending to a webhook receiver
in this test. Prometheus is pointed at the Alertmanager as deploy/prometheus/prometheus.yml points compose's at its.

Overrides, so that the test takes a minute rather than an afternoon, and nothing else:
- the rules are a rendered copy of deploy/prometheus/alerts.yml in which every `for:` is FOR (the real ones hold an
  alert for one to ten minutes), and Prometheus evaluates them every second (the deployments: every 15 s);
- the Alertmanager's group_wait, group_interval and repeat_interval are a second (the deployments: 30 s, 5 m, 4 h),
  and its webhook URL is given inline instead of read from the secret file (`url_file`, which Debian's Alertmanager
  0.25 predates).

The worker is the Ray actor that `haloweave_inference_workers_alive` counts (actors that answered the driver's last
poll), watched by HaloWeaveNoInferenceWorkers. Ray restarts a killed actor within a few seconds, sooner than a rule
holds an alert, so the actor is first stopped (SIGSTOP: a hung worker, which is what the gauge must catch too) and kept
stopped until the notification has arrived; then it is killed (SIGKILL), Ray starts it again, it loads the model and
answers, and the resolved notification must follow.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from devstack.procs import wait_until
from devstack.stack import Stack
from tests.deploy.alertmanager_server import Webhook, render_config, running_alertmanager
from tests.deploy.catalogue import ALERTS
from tests.deploy.prometheus_server import Prometheus, running_prometheus

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FOR = "3s"
ALERT = "HaloWeaveNoInferenceWorkers"
INHIBITED = "HaloWeaveInferenceWorkerDown"  # true at the same time; the configuration's inhibit rule mutes it
NOTIFY_TIMEOUT_S = 90.0


def render_rules(path: Path) -> Path:
    """deploy/prometheus/alerts.yml with every rule's `for:` set to FOR."""
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = FOR
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def workers_alive(stack: Stack) -> float | None:
    for line in httpx.get(stack.metrics_urls["inference"], timeout=5).text.splitlines():
        if line.startswith("haloweave_inference_workers_alive "):
            return float(line.split()[-1])
    return None


def is_actor(process: psutil.Process) -> bool:
    try:
        return process.cmdline()[:1] == ["ray::WorkerActor"]
    except psutil.Error:  # gone (or a zombie) since it was listed
        return False


def actor_process(stack: Stack) -> psutil.Process:
    """The worker actor's own process: Ray titles it after the actor class, under the driver's process tree."""
    driver = psutil.Process(stack.procs["inference"].pid)
    actors = [p for p in driver.children(recursive=True) if is_actor(p)]
    assert len(actors) == 1, f"expected one worker actor process, found {actors}"
    return actors[0]


def alert_names(notification: dict[str, Any]) -> set[str]:
    return {alert["labels"]["alertname"] for alert in notification["alerts"]}


def notification_of(status: str, alert: str) -> Any:
    return lambda n: n["status"] == status and alert in alert_names(n)


@pytest.fixture(scope="module")
def inference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Redis and the inference service are all that the gauge needs: the worker is ready once its engine is loaded.
    with Stack(workdir=tmp_path_factory.mktemp("alerting"), services=("inference",)) as stack:
        yield stack


def test_a_lost_worker_is_notified_and_then_resolved(inference: Stack, tmp_path: Path) -> None:
    with Webhook() as webhook:
        config = render_config(webhook.url, timing="1s")
        with running_alertmanager(config, tmp_path / "alertmanager") as alertmanager_url:
            rules = render_rules(tmp_path / "alerts.yml")
            target = alertmanager_url.removeprefix("http://")
            metrics = {"inference": inference.metrics_urls["inference"]}
            with running_prometheus(metrics, tmp_path / "prometheus", rules, [target]) as prometheus:
                check_prometheus_sends_to(prometheus, alertmanager_url)
                wait_until(lambda: workers_alive(inference) == 1, 60, "the worker to answer")

                actor = actor_process(inference)
                stopped_at = time.monotonic()
                os.kill(actor.pid, signal.SIGSTOP)
                try:
                    firing = webhook.wait_for(notification_of("firing", ALERT), NOTIFY_TIMEOUT_S, f"firing {ALERT}")
                    fired_after = time.monotonic() - stopped_at
                    # Its companion fires in Prometheus too; the Alertmanager keeps it from the receiver.
                    wait_until(lambda: INHIBITED in firing_in(prometheus), 30, f"{INHIBITED} to fire in Prometheus")
                finally:
                    os.kill(actor.pid, signal.SIGKILL)  # Ray restarts it: a new process loads the engine again

                resolved = webhook.wait_for(notification_of("resolved", ALERT), NOTIFY_TIMEOUT_S, f"resolved {ALERT}")
                assert workers_alive(inference) == 1
                assert actor_process(inference).pid != actor.pid, "the worker came back as a new process"

    # The rule held the alert for its `for:` after the gauge first read 0 (which takes the driver's poll timeout).
    assert fired_after >= float(FOR.removesuffix("s")), fired_after
    assert firing["receiver"] == "operators"
    (alert,) = [a for a in firing["alerts"] if a["labels"]["alertname"] == ALERT]
    assert alert["status"] == "firing"
    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"]["job"] == "haloweave-inference"
    assert alert["annotations"]["summary"] == "No inference worker is alive; chats get no replies"
    assert alert["annotations"]["runbook"] == "docs/cluster.md#what-to-watch"
    (done,) = [a for a in resolved["alerts"] if a["labels"]["alertname"] == ALERT]
    assert done["status"] == "resolved" and done["endsAt"] > alert["startsAt"]
    muted = [n for n in webhook.seen if INHIBITED in alert_names(n)]
    assert not muted, f"{INHIBITED} should be inhibited while {ALERT} fires: {muted}"


def firing_in(prometheus: Prometheus) -> set[str]:
    alerts = prometheus.api("alerts")["alerts"]
    return {alert["labels"]["alertname"] for alert in alerts if alert["state"] == "firing"}


def check_prometheus_sends_to(prometheus: Prometheus, alertmanager_url: str) -> None:
    def discovered() -> bool:
        active = prometheus.api("alertmanagers")["activeAlertmanagers"]
        return [am["url"] for am in active] == [f"{alertmanager_url}/api/v2/alerts"]

    wait_until(discovered, 30, "Prometheus to discover the Alertmanager")
    groups = prometheus.api("rules")["groups"]
    held = {rule["name"]: rule.get("duration") for group in groups for rule in group["rules"]}
    assert held[ALERT] == float(FOR.removesuffix("s")), "the rendered rules are the ones loaded"
