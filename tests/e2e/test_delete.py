"""DELETE /v1/sessions/{id} on the whole system: after a real chat with a snapshot, and while a reply is being
generated, nothing of the session is left anywhere: no Redis key names it and no value holds it (strings, hashes,
lists, sets, sorted sets, Streams with the job entries), the store holds no file or object of it (a local folder, and
a real S3 server), no worker holds state of it, and its WebSocket connections end with `session_deleted`. Another
session goes on untouched."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from haloweave.inference.v1 import inference_pb2, inference_pb2_grpc
from redis.asyncio import Redis
from websockets.exceptions import ConnectionClosed

from devstack.seaweed import SeaweedS3
from devstack.stack import Stack
from tests.e2e.test_chat import new_session
from tests.support.chat_client import ChatClient
from tests.support.redis_traces import traces

pytestmark = pytest.mark.e2e


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


BUCKET = "erase"
Store = Callable[[], dict[str, bytes]]  # every file or object of the snapshot store: name -> bytes


def folder_store(root: Path) -> Store:
    return lambda: {str(path): path.read_bytes() for path in root.rglob("*") if path.is_file()}


def bucket_store(s3: SeaweedS3) -> Store:
    def objects() -> dict[str, bytes]:
        client = s3.client()
        found = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            for item in page.get("Contents", []):
                found[item["Key"]] = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
        return found

    return objects


def store_traces(store: Store, session_id: str, snapshot_id: str) -> list[str]:
    """Files or objects of the snapshot store whose name or bytes hold the session id, or that are the snapshot's."""
    needle = session_id.encode()
    return [
        name
        for name, data in store().items()
        if snapshot_id in name or session_id in name or needle in data  # the claim file names its session
    ]


@pytest.fixture(scope="module")
def s3_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, SeaweedS3]]:
    """The whole system with its snapshots on a real S3 server (SeaweedFS)."""
    workdir = tmp_path_factory.mktemp("erase-s3")
    with SeaweedS3(workdir / "s3") as s3:
        s3.create_bucket(BUCKET)
        env = {**s3.env(), "HALOWEAVE_SNAPSHOT_MASTER_KEY": secrets.token_hex(32)}
        with Stack(workdir=workdir, snapshot_url=f"s3://{BUCKET}/snapshots", env=env) as stack:
            yield stack, s3
            assert not stack.dead(), f"services died: {stack.dead()}"


def forget(stack: Stack, session_id: str) -> inference_pb2.ForgetSessionResponse:
    with grpc.insecure_channel(stack.inference_addr) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        return stub.ForgetSession(inference_pb2.ForgetSessionRequest(session_id=session_id), timeout=60)


def ended_with_session_deleted(client: ChatClient) -> None:
    frames = client.recv_until(lambda f: f["type"] == "error", timeout=60)
    assert frames[-1]["code"] == "session_deleted", frames[-3:]
    with pytest.raises(ConnectionClosed) as closed:
        client.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4410


def test_delete_leaves_nothing_of_the_session_anywhere(stack: Stack) -> None:
    erase_and_look_everywhere(stack, folder_store(stack.workdir / "snapshots"))


def test_delete_leaves_nothing_of_the_session_in_an_s3_store(s3_stack: tuple[Stack, SeaweedS3]) -> None:
    stack, s3 = s3_stack
    erase_and_look_everywhere(stack, bucket_store(s3))


def erase_and_look_everywhere(stack: Stack, store: Store) -> None:
    with new_session(stack, max_new_tokens=6) as owner, new_session(stack, max_new_tokens=4) as other:
        assert owner.chat("Remember: the key is under the blue pot.")[-1]["type"] == "done"
        assert other.chat("Hello there.")[-1]["type"] == "done"
        assert owner.session is not None and other.session is not None
        sid, token = owner.session["session_id"], owner.session["token"]
        url = f"{stack.gateway_url}/v1/sessions/{sid}"
        taken = httpx.post(f"{url}/snapshots", headers=bearer(token), timeout=120)
        assert taken.status_code == 200, taken.text
        snapshot_id = taken.json()["snapshot_id"]
        assert store_traces(store, sid, snapshot_id)

        # Only the session's own token opens it: another session's token, or none, erases nothing.
        for headers in (bearer(other.session["token"]), {}):
            refused = httpx.delete(url, headers=headers, timeout=30)
            assert refused.status_code == 401 and refused.json()["code"] == "unauthorized", refused.text
        assert httpx.get(f"{url}/export", headers=bearer(token), timeout=30).status_code == 200

        with ChatClient(stack.ws_url) as listener:
            assert listener.hello(sid, token)["type"] == "session"
            # A reply under way when the DELETE arrives: it is cancelled first.
            owner.send({"type": "settings", "settings": {"max_new_tokens": 400}})
            owner.recv_until(lambda f: f["type"] == "settings" and f["settings"]["max_new_tokens"] == 400)
            owner.send({"type": "user_message", "text": "Now tell me a very long story about the blue pot."})
            owner.recv_until(lambda f: f["type"] == "token" and f["role"] == "assistant", timeout=120)

            erased = httpx.delete(url, headers=bearer(token), timeout=120)
            assert erased.status_code == 200, erased.text
            summary = erased.json()
            assert summary["session_id"] == sid and snapshot_id in summary["snapshots"]
            assert any(w["cached"] and w["waited"] for w in summary["workers"]), summary
            assert summary["jobs"] >= 3 and summary["redis_keys"] > 0  # two replies and a snapshot

            ended_with_session_deleted(owner)
            ended_with_session_deleted(listener)

        again = httpx.delete(url, headers=bearer(token), timeout=30)
        assert again.status_code == 404 and again.json()["code"] == "unknown_session", again.text
        assert httpx.get(f"{url}/export", headers=bearer(token), timeout=30).status_code == 404
        with ChatClient(stack.ws_url) as late:
            refused_hello = late.hello(sid, token)
            assert refused_hello["type"] == "error" and refused_hello["code"] == "unknown_session"

        assert asyncio.run(_redis_traces(stack.redis_url, sid)) == []
        assert store_traces(store, sid, snapshot_id) == []
        probe = forget(stack, sid)
        assert probe.workers and not any(w.cached or w.waited for w in probe.workers)
        assert probe.jobs_removed == 0 and probe.keys_removed == 0
        assert asyncio.run(_redis_traces(stack.redis_url, sid)) == []

        # The other session is untouched.
        assert other.chat("Are you still there?")[-1]["type"] == "done"


async def _redis_traces(redis_url: str, session_id: str) -> list[str]:
    redis = Redis.from_url(redis_url)
    try:
        return await traces(redis, session_id)
    finally:
        await redis.aclose()
