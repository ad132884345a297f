"""The gateway's REST API against its own OpenAPI schema (schemathesis's pytest integration, bench.fuzz.rest for what
is checked), and path-like snapshot ids at the REST door: refused, and nothing read or written anywhere."""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from redis.asyncio import Redis
from schemathesis import Case

from bench.fuzz.rest import RestFuzzer
from bench.fuzz.target import Target, tree
from bench.fuzz.websocket import Victim, new_victim
from services.common import keys
from services.gateway.app import create_app
from services.gateway.config import GatewayConfig
from services.gateway.openai import api_keys

EXAMPLES = 40  # per operation and credentials


def _schema() -> object:
    """The gateway's schema as its code builds it (the servers start later, in fixtures); the served one is checked
    to be the same document."""
    peer = "127.0.0.1:1"
    config = GatewayConfig(
        redis_url="redis://127.0.0.1:1/0", tracker_addr=peer, snapshot_addr=peer, inference_addr=peer
    )
    return create_app(config).openapi()


# schemathesis.pytest.from_fixture would load it from the running gateway, but its lazy loader does not run under
# this pytest (it reads a node attribute pytest 9 removed).
schema = schemathesis.openapi.from_dict(_schema())


def test_the_served_schema_is_the_one_fuzzed(fuzz_target: Target) -> None:
    import httpx

    assert httpx.get(f"{fuzz_target.http_url}/openapi.json", timeout=30).json() == _schema()


@pytest.fixture(scope="module")
def owner(fuzz_target: Target) -> Victim:
    return new_victim(fuzz_target)


@pytest.fixture(scope="module")
def rest_fuzzer(fuzz_target: Target, owner: Victim) -> Iterator[RestFuzzer]:
    fuzzer = RestFuzzer(fuzz_target, owner)
    yield fuzzer
    fuzzer.close()
    assert fuzzer.tally.crashes == 0, fuzzer.tally.details


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_is_what_the_schema_declares(case: Case, rest_fuzzer: RestFuzzer) -> None:
    rest_fuzzer.run(case)  # sent to the real gateway (bench.fuzz.rest), and every answer checked


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_with_a_real_session_every_answer_is_what_the_schema_declares(
    case: Case, rest_fuzzer: RestFuzzer, owner: Victim
) -> None:
    """The same with the session id and token of a real session, so that requests get past authorisation."""
    if "session_id" not in (case.path_parameters or {}):
        pytest.skip("no session in this operation")
    case.path_parameters = {**(case.path_parameters or {}), "session_id": owner.session_id}
    case.headers = {**(case.headers or {}), "authorization": f"Bearer {owner.token}"}
    rest_fuzzer.run(case)


@pytest.fixture(scope="module")
def api_key(fuzz_target: Target) -> str:
    async def create() -> str:
        client = Redis.from_url(fuzz_target.redis_url)
        try:
            return (await api_keys.create(client, "fuzz"))[1]
        finally:
            await client.aclose()

    return asyncio.run(create())


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_with_an_api_key_every_openai_answer_is_what_the_schema_declares(
    case: Case, rest_fuzzer: RestFuzzer, api_key: str
) -> None:
    """The OpenAI-compatible routes with a valid API key, so that requests get past authorisation to the parsing."""
    if not case.operation.path.startswith(("/v1/chat/", "/v1/models")):
        pytest.skip("not an OpenAI route")
    case.headers = {**(case.headers or {}), "authorization": f"Bearer {api_key}"}
    rest_fuzzer.run(case)


TRAVERSALS = [
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%2E%2E",
    "..",
    ".",
    "%2e",
    "m1d1x1x1x1%0A",
    "m1d1x1x1x1%00",
    "%00",
    "..%5C..%5Cx",
    "%2Fetc%2Fpasswd",
    "~%2F.ssh",
    "m1d1x1x1x1%2F..%2F..%2Fx",
    "m1d1x1x1x1%20",
    "%252e%252e%252f",
    "m" + "1" * 300,
]


def _raw_post(base_url: str, path: str, token: str) -> tuple[int, bytes]:
    """A request with the path exactly as written (HTTP clients normalise `..` segments away)."""
    url = urlparse(base_url)
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    try:
        connection.putrequest("POST", path, skip_accept_encoding=True)
        connection.putheader("Authorization", f"Bearer {token}")
        connection.putheader("Content-Length", "0")
        connection.endheaders()
        reply = connection.getresponse()
        return reply.status, reply.read()
    finally:
        connection.close()


@pytest.mark.parametrize("snapshot_id", TRAVERSALS)
def test_path_like_snapshot_ids_are_refused_at_the_door(fuzz_target: Target, owner: Victim, snapshot_id: str) -> None:
    redis = fuzz_target.redis()
    try:
        store, jobs = tree(fuzz_target.workdir / "snapshots"), redis.xlen(keys.JOBS_STREAM)
        path = f"/v1/sessions/{owner.session_id}/snapshots/{snapshot_id}/restore"
        status, body = _raw_post(fuzz_target.http_url, path, owner.token)
        assert status in (400, 404), (status, body)
        answer = json.loads(body)
        assert set(answer) == {"code", "message"} and answer["code"] in ("bad_frame", "not_found"), answer
        # Nothing queued for a worker, nothing read into or written to the store.
        assert redis.xlen(keys.JOBS_STREAM) == jobs
        assert tree(fuzz_target.workdir / "snapshots") == store
    finally:
        redis.close()


def test_settings_bodies_that_are_no_object_are_invalid_settings(fuzz_target: Target, owner: Victim) -> None:
    import httpx

    url = f"{fuzz_target.http_url}/v1/sessions/{owner.session_id}/settings"
    headers = {"Authorization": f"Bearer {owner.token}", "Content-Type": "application/json"}
    with httpx.Client(timeout=30) as client:
        before = client.get(url, headers=headers).json()
        for body in [
            b"",
            b"[1, 2]",
            b"null",
            b"{",
            b"[" * 5000,
            b'{"stop": ["\\ud800"]}',
            b'{"boost": 1' + b"0" * 400 + b"}",
        ]:
            reply = client.put(url, headers=headers, content=body)
            assert reply.status_code == 400 and reply.json()["code"] == "invalid_settings", (body[:40], reply.text)
        assert client.get(url, headers=headers).json() == before
        missing = client.get(f"{fuzz_target.http_url}/v1/nothing/here")
        assert missing.status_code == 404 and set(missing.json()) == {"code", "message"}
