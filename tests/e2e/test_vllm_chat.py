"""A chat on the vLLM engine through the whole system: `make run ARGS="--engine vllm"`'s stack, with the inference
service (Ray driver and worker actor) running in the vLLM environment and everything else as usual.

The chat prunes (a small context budget), so the worker re-prefills through vLLM's prefix cache mid-reply; brightness
streams from the rows captured inside vLLM's forward; a snapshot is refused with a clear error and the chat goes on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.stack import Stack
from tests.e2e.test_chat import new_session
from tests.e2e.test_snapshot_restore import auth
from tests.support.chat_client import reply_text

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def vllm_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("vllm-stack")
    with Stack(workdir=workdir, engine="vllm") as running:
        yield running


def test_a_pruned_chat_is_answered_on_vllm_and_a_snapshot_is_refused(vllm_stack: Stack) -> None:
    with new_session(vllm_stack, max_new_tokens=16, max_context_tokens=80, min_distance=0) as client:
        first = client.chat("My garden has roses and tulips. The roses are red. The tulips are yellow.")
        assert first[-1]["type"] == "done", first[-3:]
        frames = client.chat("Which flowers are yellow? Answer in one short sentence.")
        assert frames[-1]["type"] == "done", frames[-3:]
        assert reply_text(frames), "the model produced a reply"
        assert any(f["type"] == "pruned" for f in client.frames), "the budget pruned something"
        brightness = [f for f in frames if f["type"] == "brightness"]
        assert brightness and all(len(f["positions"]) == len(f["scores"]) for f in brightness)
        assert any(score > 0 for f in brightness for score in f["scores"])

        session_id, headers = auth(client)
        refused = httpx.post(
            f"{vllm_stack.gateway_url}/v1/sessions/{session_id}/snapshots", headers=headers, timeout=120
        )
        assert refused.status_code >= 400, refused.text
        assert "snapshots are not available on the vLLM engine" in refused.text
        told = client.recv_until(lambda f: f["type"] == "error")[-1]  # the session's stream says so too
        assert told["code"] == "failed_precondition" and "vLLM" in told["message"]

        again = client.chat("Thank you!")
        assert again[-1]["type"] == "done", again[-3:]
