"""No secret reaches a log: every log file of a real stack is searched for every secret it was given or made.

The stack runs as it would in production, with every secret set: Redis with a password (so every service's
HALOWEAVE_REDIS_URL carries it), snapshots in a real S3 store (SeaweedFS) with enforced credentials
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), an explicit HALOWEAVE_SNAPSHOT_MASTER_KEY. Through the public interfaces
it then does what touches each of them: a chat (a session token is made, its hash stored in Redis), a snapshot saved
and restored (S3 credentials, the master key), a resume with the right token, one with a wrong token over the
WebSocket and one over REST. After the stack has stopped (so that shutdown messages are in too), every log file is
searched: the services' own, Redis's, the S3 server's and Ray's (the session's logs: the raylet's, the GCS's and the
worker actors' stdout and stderr, where the inference workers' logging goes).

It runs twice: with the inference service's private local Ray (`make run`, the other tests), whose logs are under the
stack's RAY_TMPDIR, and joined to a Ray cluster with token authentication (compose and Kubernetes run it so: a head
with no compute and a worker node, tests/deploy/ray_cluster.py), whose RAY_AUTH_TOKEN is one more secret and whose
nodes' logs are searched too.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from devstack.procs import Proc, free_port, redis_argv, wait_until
from devstack.seaweed import SeaweedS3
from devstack.stack import Stack
from tests.deploy.ray_cluster import ray_cluster
from tests.support.chat_client import ChatClient

pytestmark = pytest.mark.e2e

BUCKET = "haloweave-secrets-test"


@dataclass
class Run:
    logs: list[Path]
    secrets: dict[str, str]  # what it is -> its value


def log_files(root: Path) -> list[Path]:
    """Every log under `root`: files named *.log, *.out or *.err, and everything in a `logs` folder (Ray's); not the
    S3 server's data folder (its database's write-ahead files are named *.log too)."""
    return sorted(
        path
        for path in root.rglob("*")
        if path.is_file()
        and (path.suffix in (".log", ".out", ".err") or "logs" in path.relative_to(root).parts)
        and path.relative_to(root).parts[:2] != ("s3", "data")
    )


def leaks(logs: list[Path], values: dict[str, str]) -> list[str]:
    """`file: what` for every secret found in a log, in any of the forms it could be printed in."""
    found = []
    for path in logs:
        data = path.read_bytes()
        for what, value in values.items():
            forms = {value.encode()}
            if what == "HALOWEAVE_SNAPSHOT_MASTER_KEY":  # the key's bytes, as repr or base64 would print them
                raw = bytes.fromhex(value)
                forms |= {base64.b64encode(raw), repr(raw).encode()[2:-1]}
            if any(form in data for form in forms):
                found.append(f"{path}: {what}")
    return found


def start_redis_with_password(workdir: Path, password: str) -> tuple[Proc, str]:
    port = free_port()
    data = workdir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    argv = [*redis_argv(data, port, appendonly=True), "--requirepass", password]
    proc = Proc("redis", argv, {}, workdir / "logs" / "redis.log")
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    wait_until(lambda: bool(redis.Redis.from_url(url, socket_timeout=0.5).ping()), 15, "redis with a password", proc)
    return proc, url


def traffic(stack: Stack) -> dict[str, str]:
    """Chat, snapshot, restore, resumes with the right and a wrong token; returns the tokens involved."""
    wrong = secrets.token_urlsafe(32)
    with ChatClient(stack.ws_url) as client:
        session = client.hello()
        assert session["type"] == "session", session
        client.send({"type": "settings", "settings": {"max_new_tokens": 4, "temperature": 0.0}})
        client.recv_until(lambda f: f["type"] in ("settings", "error"))
        frames = client.chat("My name is Ada. Say hello.")
        assert frames[-1]["type"] == "done", frames[-3:]
    session_id, token = session["session_id"], session["token"]

    base = f"{stack.gateway_url}/v1/sessions/{session_id}"
    headers = {"Authorization": f"Bearer {token}"}
    taken = httpx.post(f"{base}/snapshots", headers=headers, timeout=120)
    assert taken.status_code == 200, taken.text
    restored = httpx.post(f"{base}/snapshots/{taken.json()['snapshot_id']}/restore", headers=headers, timeout=120)
    assert restored.status_code == 200, restored.text

    with ChatClient(stack.ws_url) as client:
        assert client.hello(session_id, token, last_event_id=0)["type"] == "session"
    with ChatClient(stack.ws_url) as client:
        refused = client.hello(session_id, wrong)
        assert refused["type"] == "error" and refused["code"] == "unauthorized", refused
    rest = httpx.get(f"{base}/export", headers={"Authorization": f"Bearer {wrong}"}, timeout=30)
    assert rest.status_code == 401, rest.text
    return {"session token": token, "wrong token sent by a client": wrong}


@pytest.fixture(scope="module", params=["local Ray", "Ray cluster"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    workdir = tmp_path_factory.mktemp("secrets")
    password, master_key = secrets.token_hex(16), secrets.token_hex(32)
    with contextlib.ExitStack() as running:
        s3 = running.enter_context(SeaweedS3(workdir / "s3"))
        s3.create_bucket(BUCKET)
        env = {**s3.env(), "HALOWEAVE_SNAPSHOT_MASTER_KEY": master_key}
        values = {
            "Redis password (in HALOWEAVE_REDIS_URL)": password,
            "HALOWEAVE_SNAPSHOT_MASTER_KEY": master_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        }
        roots = [workdir]
        if request.param == "Ray cluster":
            cluster = running.enter_context(ray_cluster(workdir / "raycluster", worker_cpus=2))
            env |= {**cluster.env, "RAY_ADDRESS": cluster.address, "HALOWEAVE_RAY_NUM_CPUS": "2"}
            values["RAY_AUTH_TOKEN"] = cluster.env["RAY_AUTH_TOKEN"]
            roots.append(cluster.temp_dir)
        redis_proc, redis_url = start_redis_with_password(workdir, password)
        running.callback(redis_proc.stop)
        stack = Stack(workdir=workdir, redis_url_override=redis_url, snapshot_url=f"s3://{BUCKET}/snapshots", env=env)
        with stack:
            values |= traffic(stack)
            assert not stack.dead(), f"services died: {stack.dead()}"
        # Searched before the cluster stops: its temp dir goes with it.
        yield Run([path for root in roots for path in log_files(root)], values)


def test_the_search_covers_every_log_the_stack_writes(run: Run) -> None:
    names = {path.name for path in run.logs}
    assert {"redis.log", "tracker.log", "snapshot.log", "inference.log", "gateway.log", "weed.log"} <= names
    ray_logs = [path for path in run.logs if "session_" in str(path)]
    assert any(path.name.startswith("raylet") for path in ray_logs), "Ray's session logs were not found"
    assert any(path.name.startswith("worker-") for path in ray_logs), "the worker actors' output was not found"


def test_the_search_finds_a_secret_that_is_there(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    log.write_text("12:00:00 gateway INFO x: hello abc123\n")
    key = "ab" * 32
    assert leaks([log], {"token": "abc123"}) == [f"{log}: token"]
    log.write_bytes(repr(bytes.fromhex(key)).encode())
    assert leaks([log], {"HALOWEAVE_SNAPSHOT_MASTER_KEY": key}) == [f"{log}: HALOWEAVE_SNAPSHOT_MASTER_KEY"]


def test_no_log_holds_a_secret(run: Run) -> None:
    found = leaks(run.logs, run.secrets)
    assert not found, "secrets in logs:\n" + "\n".join(found)
