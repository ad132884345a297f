"""The whole system watched by a real Prometheus: every dashboard query and every alert expression returns data.

The stack (all four services as processes) and a Prometheus scraping their /metrics every second with the project's
alert rules loaded are started; then real traffic goes through the public interfaces: one chat of two turns over the
gateway WebSocket with pruning on, a snapshot taken and restored over REST, a refused request, a restore of a snapshot
that does not exist, and one malformed frame sent to the tracker the way a faulty worker would. Once Prometheus has
scraped after all that, each query is evaluated over its HTTP API.

Alert expressions are comparisons that are false on a healthy system, so an empty answer proves nothing. Each is
split at its top-level comparison and set operators (`a > 0.01` → `a`; `a > 5 and deriv(a[10m]) > 0` → `a`,
`deriv(a[10m])`); every operand must return data, and the whole expression must evaluate without error. Prometheus'
own rule evaluation must report every rule healthy.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import httpx
import pytest
from haloweave.tracker.v1 import tracker_pb2, tracker_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from devstack.stack import Stack
from tests.deploy.catalogue import alert_rules, dashboard_queries, metric_catalogue, operands, with_range
from tests.deploy.prometheus_server import Prometheus, running_prometheus, wait_for_scrapes_after
from tests.support.chat_client import ChatClient, Frame

pytestmark = pytest.mark.e2e

# Grafana's $__rate_interval, made wide enough to span the whole test (Prometheus starts empty with it).
WINDOW = "5m"
SHORT = {"max_new_tokens": 8, "temperature": 0.0}


@dataclass
class Traffic:
    session_id: str
    pruned_frames: int
    finished_at: float


@pytest.fixture(scope="module")
def prometheus(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    with running_prometheus(stack.metrics_urls, tmp_path_factory.mktemp("prometheus")) as server:
        yield server


def send_a_malformed_frame(tracker_addr: str) -> None:
    """What a faulty worker would do: open a reply, then send a frame for a step that is not the next one."""
    with grpc.insecure_channel(tracker_addr) as channel:
        stub = tracker_pb2_grpc.TrackerStub(channel)
        session = stub.CreateSession(tracker_pb2.CreateSessionRequest(), timeout=30)
        stub.AppendMessage(
            tracker_pb2.AppendMessageRequest(session_id=session.session_id, role="user", text="Hi."), timeout=30
        )
        requests = [
            tracker_pb2.GenerateRequest(open=tracker_pb2.Open(session_id=session.session_id, job_id=uuid.uuid4().hex)),
            tracker_pb2.GenerateRequest(frame=tracker_pb2.Frame(step=99, token_id=1)),
        ]
        with pytest.raises(grpc.RpcError) as refused:
            for _ in stub.Generate(iter(requests), timeout=30):
                pass
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()


class Conversation:
    """A chat client that does what the protocol asks of clients on `unavailable`: reconnect and resume from the last
    event id (the replay then brings the events it missed, each once)."""

    RESUMES = 3

    def __init__(self, ws_url: str) -> None:
        self.ws_url = ws_url
        self.client = ChatClient(ws_url)
        session = self.client.hello()
        assert session["type"] == "session", session
        self.session_id, self.token = session["session_id"], session["token"]
        self.last_event_id = 0

    def until(self, types: set[str]) -> list[Frame]:
        frames: list[Frame] = []
        for _ in range(self.RESUMES + 1):
            frames += self.client.recv_until(lambda f: f["type"] in types | {"error"})
            self.last_event_id = max([self.last_event_id] + [f.get("event_id", 0) for f in frames])
            last = frames[-1]
            if last["type"] != "error" or last["code"] != "unavailable":
                return frames
            self.client.close()
            self.client = ChatClient(self.ws_url)
            resumed = self.client.hello(self.session_id, self.token, self.last_event_id)
            assert resumed["type"] == "session", resumed
        return frames

    def settings(self, **settings: object) -> None:
        self.client.send({"type": "settings", "settings": settings})
        assert self.until({"settings"})[-1]["type"] == "settings"

    def chat(self, text: str) -> list[Frame]:
        self.client.send({"type": "user_message", "text": text})
        frames = self.until({"done"})
        assert frames[-1]["type"] == "done", frames[-3:]
        return frames

    def close(self) -> None:
        self.client.close()


@pytest.fixture(scope="module")
def traffic(stack: Stack, prometheus: Prometheus) -> Traffic:
    chat = Conversation(stack.ws_url)
    try:
        chat.settings(**SHORT)
        first = chat.chat("My cat is called Tom. He likes fish. He sleeps all day.")
        # The smallest budget allowed: what is never pruned now (the system prompt and this message), which the
        # next turn exceeds, so it prunes the first one's sentences.
        reply = sum(1 for frame in first if frame["type"] == "token" and frame["role"] == "assistant")
        chat.settings(max_context_tokens=first[-1]["stats"]["active_tokens"] - reply)
        second = chat.chat("What is my cat called?")
        pruned = sum(1 for frame in second if frame["type"] == "pruned")
    finally:
        chat.close()
    session_id, token = chat.session_id, chat.token

    headers = {"Authorization": f"Bearer {token}"}
    base = f"{stack.gateway_url}/v1/sessions/{session_id}"
    saved = httpx.post(f"{base}/snapshots", headers=headers, timeout=120)
    assert saved.status_code == 200, saved.text
    restored = httpx.post(f"{base}/snapshots/{saved.json()['snapshot_id']}/restore", headers=headers, timeout=120)
    assert restored.status_code == 200, restored.text
    # Failures that operators must see: a wrong token, and a snapshot that does not exist.
    refused = httpx.get(f"{base}/export", headers={"Authorization": "Bearer not-the-token"}, timeout=30)
    assert refused.status_code in (401, 403), refused.text
    missing = httpx.post(f"{base}/snapshots/m1d1x0x0x0/restore", headers=headers, timeout=120)
    assert missing.status_code == 404, missing.text
    send_a_malformed_frame(stack.tracker_addr)

    finished = time.time()
    wait_for_scrapes_after(prometheus, [f"haloweave-{name}" for name in stack.metrics_urls], finished)
    return Traffic(session_id, pruned, finished)


def test_the_chat_pruned_something(traffic: Traffic) -> None:
    # Otherwise the pruning panels would be checked against nothing.
    assert traffic.pruned_frames >= 1


def test_every_dashboard_query_returns_data(prometheus: Prometheus, traffic: Traffic) -> None:
    empty = []
    for title, expr in dashboard_queries():
        if not prometheus.query(with_range(expr, WINDOW)):
            empty.append(f"{title}: {expr}")
    assert not empty, "dashboard queries with no data:\n" + "\n".join(empty)


@pytest.mark.parametrize(
    "histogram",
    [
        "haloweave_tracker_aggregation_seconds",
        "haloweave_tracker_step_update_seconds",
        "haloweave_inference_time_to_first_token_seconds",
        "haloweave_inference_inter_token_latency_seconds",
        "haloweave_gateway_delivery_seconds",
    ],
)
def test_latency_quantiles_are_measured(prometheus: Prometheus, traffic: Traffic, histogram: str) -> None:
    # These histograms exist from start-up with zero counts, so the chat's observations show up as a rate > 0 and the
    # p99 is a real duration (NaN would mean no observation in the window).
    (sample,) = prometheus.query(f"histogram_quantile(0.99, sum by (le) (rate({histogram}_bucket[{WINDOW}])))")
    value = float(sample["value"][1])
    assert math.isfinite(value) and value > 0, f"{histogram} p99 = {value}"


def test_throughput_and_pruning_counters_moved(prometheus: Prometheus, traffic: Traffic) -> None:
    for expr in (
        "sum(increase(haloweave_inference_generated_tokens_total[5m]))",
        "sum(increase(haloweave_tracker_frames_total[5m]))",
        "sum(haloweave_tracker_pruned_tokens_total)",
        'sum(haloweave_snapshot_bytes_total{op="save"})',
        'sum(haloweave_snapshot_failures_total{op="load"})',
        'sum(haloweave_tracker_frame_errors_total{code="invalid_argument"})',
    ):
        (sample,) = prometheus.query(expr)
        assert float(sample["value"][1]) > 0, expr


def test_every_alert_expression_evaluates_and_reads_existing_series(prometheus: Prometheus, traffic: Traffic) -> None:
    missing = []
    for rule in alert_rules():
        prometheus.query(rule["expr"])  # a refused expression raises, naming the error
        parts = operands(rule["expr"])
        assert parts, f"{rule['alert']}: no operand found in {rule['expr']}"
        missing += [f"{rule['alert']}: {part}" for part in parts if not prometheus.query(part)]
    assert not missing, "alert operands with no data:\n" + "\n".join(missing)


def test_a_healthy_system_raises_no_availability_alert(prometheus: Prometheus, traffic: Traffic) -> None:
    rules = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    for alert in ("HaloWeaveTargetDown", "HaloWeaveNoInferenceWorkers"):
        assert prometheus.query(rules[alert]) == [], alert


def test_prometheus_evaluates_every_rule_without_error(prometheus: Prometheus, traffic: Traffic) -> None:
    groups = prometheus.api("rules")["groups"]
    evaluated = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(evaluated) == {rule["alert"] for rule in alert_rules()}
    for name, rule in evaluated.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"


def test_services_export_the_catalogued_metrics(stack: Stack, traffic: Traffic) -> None:
    """The real /metrics of each service against docs/architecture.md: names, types, label names; nothing extra."""
    catalogue = metric_catalogue()
    problems = []
    for service, url in stack.metrics_urls.items():
        families = {
            family.name: family
            for family in text_string_to_metric_families(httpx.get(url, timeout=10).text)
            # prometheus_client's `<name>_created` series (the time a counter or histogram started) come with the
            # library, not from the catalogue.
            if family.name.startswith("haloweave_") and not family.name.endswith("_created")
        }
        wanted = {spec.family: spec for spec in catalogue.values() if spec.service == service}
        for family_name, spec in wanted.items():
            family = families.get(family_name)
            if family is None:
                problems.append(f"{service}: {spec.name} is not exported")
                continue
            if family.type != spec.kind:
                problems.append(f"{service}: {spec.name} is a {family.type}, the catalogue says {spec.kind}")
            labels = {label for sample in family.samples for label in sample.labels} - {"le"}
            if labels != spec.labels and family.samples:
                problems.append(f"{service}: {spec.name} has labels {sorted(labels)}, not {sorted(spec.labels)}")
            if any("session" in label for label in labels):
                problems.append(f"{service}: {spec.name} is labelled by session")
        for extra in sorted(set(families) - set(wanted)):
            problems.append(f"{service}: {extra} is exported but not in docs/architecture.md")
    assert not problems, "\n".join(problems)
