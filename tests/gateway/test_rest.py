"""REST against a real gateway + tracker + Redis: every session route refuses without the session's own token."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from services.common import events, keys
from tests.gateway.conftest import Client, Gateway, open_client

ROUTES = [
    ("GET", "/export"),
    ("GET", "/settings"),
    ("PUT", "/settings"),
    ("GET", "/snapshots"),
    ("POST", "/snapshots"),
    ("POST", "/snapshots/m1d1x1x1x1/restore"),
    ("DELETE", ""),
]


async def make_session(gateway: Gateway) -> tuple[str, str]:
    async with open_client(gateway.ws_url) as ws:
        session = await Client(ws).hello()
    return session["session_id"], session["token"]


@pytest.fixture
async def api(gateway: Gateway) -> Any:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_every_session_route_refuses_without_its_token(gateway: Gateway, api: httpx.AsyncClient) -> None:
    sid, token = await make_session(gateway)
    _, other_token = await make_session(gateway)
    refusals = [
        {},
        {"Authorization": token},  # no scheme
        {"Authorization": f"Basic {token}"},
        bearer("A" * 43),
        bearer(other_token),  # another session's valid token
        bearer(token[:-1]),
    ]
    for method, path in ROUTES:
        for headers in refusals:
            body = {"decay_rate": 0.5} if method == "PUT" else None
            reply = await api.request(method, f"/v1/sessions/{sid}{path}", headers=headers, json=body)
            assert reply.status_code == 401, (method, path, headers, reply.text)
            assert reply.json()["code"] == "unauthorized"
            assert reply.headers["www-authenticate"] == "Bearer"
        unknown = await api.request(method, f"/v1/sessions/{'f' * 32}{path}", headers=bearer(token))
        assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_session"
    # The refused PUTs changed nothing.
    settings = (await api.get(f"/v1/sessions/{sid}/settings", headers=bearer(token))).json()
    assert settings["decay_rate"] != 0.5


async def test_export_and_settings(gateway: Gateway, api: httpx.AsyncClient) -> None:
    sid, token = await make_session(gateway)
    exported = (await api.get(f"/v1/sessions/{sid}/export", headers=bearer(token))).json()
    # The model name comes from the tracker (or the workers, absent here); the key is part of the contract.
    assert exported["session_id"] == sid and "model" in exported
    assert exported["tokens"][0]["token"] == "<|im_start|>" and exported["tokens"][0]["role"] == "system"
    assert set(exported["tokens"][0]) == {
        "position", "token", "token_id", "attention_score", "turn_id", "sentence_id", "role", "deleted",
    }  # fmt: skip
    assert [t["position"] for t in exported["tokens"]] == sorted(t["position"] for t in exported["tokens"])
    assert exported["next_position"] == exported["tokens"][-1]["position"] + 1

    url = f"/v1/sessions/{sid}/settings"
    changed = await api.put(url, headers=bearer(token), json={"decay_mode": "exponential", "stop": ["END"]})
    assert changed.status_code == 200, changed.text
    assert changed.json()["decay_mode"] == "exponential" and changed.json()["stop"] == ["END"]
    assert (await api.get(url, headers=bearer(token))).json() == changed.json()
    for bad in [{"decay_mode": "sideways"}, {"nonsense": 1}, {"top_p": "all"}, [1, 2]]:
        reply = await api.put(url, headers=bearer(token), json=bad)
        assert reply.status_code in (400, 422), (bad, reply.text)
        if reply.status_code == 400:
            assert reply.json()["code"] == "invalid_settings"
    assert (await api.get(url, headers=bearer(token))).json() == changed.json()  # nothing half-applied
    cleared = await api.put(url, headers=bearer(token), json={"stop": []})
    assert cleared.json()["stop"] == []


ANSWERED: set[str] = set()


async def answer_next_job(redis: Redis, sid: str, job_type: str, answer: str, **data: Any) -> dict[str, str]:
    """Plays the worker's part: waits for the gateway's job on the job Stream and appends its answer event."""
    while True:
        entries = await redis.xrevrange(keys.JOBS_STREAM, count=20)
        for _, fields in entries:
            job = {k.decode(): v.decode() for k, v in fields.items()}
            if job["session_id"] == sid and job["type"] == job_type and job["job_id"] not in ANSWERED:
                ANSWERED.add(job["job_id"])
                await events.append_event(redis, sid, answer, {"job_id": job["job_id"], **data})
                return job
        await asyncio.sleep(0.02)


async def test_snapshot_take_and_restore_wait_for_the_workers_answer(gateway: Gateway, api: httpx.AsyncClient) -> None:
    sid, token = await make_session(gateway)
    redis = Redis.from_url(gateway.redis_url)
    try:
        take = asyncio.create_task(api.post(f"/v1/sessions/{sid}/snapshots", headers=bearer(token)))
        job = await answer_next_job(
            redis, sid, "snapshot", "snapshot_saved", snapshot_id="m11d22x10x0x0", tokens=30, bytes=1234
        )
        reply = await take
        assert job["type"] == "snapshot"
        assert reply.status_code == 200, reply.text
        assert reply.json()["snapshot_id"] == "m11d22x10x0x0" and reply.json()["job_id"] == job["job_id"]

        restore = asyncio.create_task(
            api.post(f"/v1/sessions/{sid}/snapshots/m11d22x10x0x0/restore", headers=bearer(token))
        )
        job = await answer_next_job(
            redis, sid, "restore", "snapshot_restored", snapshot_id="m11d22x10x0x0", active_tokens=30
        )
        reply = await restore
        assert job["type"] == "restore" and job["snapshot_id"] == "m11d22x10x0x0"
        assert reply.status_code == 200 and reply.json()["active_tokens"] == 30

        refused = asyncio.create_task(
            api.post(f"/v1/sessions/{sid}/snapshots/m1d1x1x1x1/restore", headers=bearer(token))
        )
        await answer_next_job(redis, sid, "restore", "error", code="not_found", message="no snapshot m1d1x1x1x1")
        reply = await refused
        assert reply.status_code == 404 and reply.json()["code"] == "not_found"
    finally:
        await redis.aclose()


async def test_snapshot_without_a_worker_times_out_clearly(gateway: Gateway, api: httpx.AsyncClient) -> None:
    sid, token = await make_session(gateway)
    reply = await api.post(f"/v1/sessions/{sid}/snapshots", headers=bearer(token))  # job timeout is 2 s here
    assert reply.status_code == 504 and reply.json()["code"] == "timeout"
    listing = await api.get(f"/v1/sessions/{sid}/snapshots", headers=bearer(token))  # no snapshot service running
    assert listing.status_code == 503 and listing.json()["code"] == "unavailable"


async def test_health_ready_metrics_openapi(gateway: Gateway, api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    ready = await api.get("/readyz")
    assert ready.status_code == 503  # the snapshot service and the workers are not running in this module
    assert ready.json()["checks"] == {"redis": True, "tracker": True, "snapshot": False, "inference": False}
    await api.get(f"/v1/sessions/{'e' * 32}/export")
    metrics = (await api.get("/metrics")).text
    assert "haloweave_gateway_connections " in metrics
    assert 'haloweave_gateway_errors_total{code="unauthorized"}' in metrics
    assert 'haloweave_gateway_frames_total{direction="in",type="hello"}' in metrics
    assert "haloweave_gateway_delivery_seconds_bucket" in metrics
    schema = (await api.get("/openapi.json")).json()
    assert {"/v1/sessions/{session_id}/export", "/v1/sessions/{session_id}/snapshots/{snapshot_id}/restore"} <= set(
        schema["paths"]
    )
    page = await api.get("/")
    assert page.status_code == 200 and "Halo Weave" in page.text
    assert (await api.get("/static/js/main.js")).status_code == 200
