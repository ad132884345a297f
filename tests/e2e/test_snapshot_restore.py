"""Snapshots through the gateway: save a conversation's KV cache, restore it, and continue exactly.

Two sessions hold the same conversation. One is snapshotted and restored between its turns; the other is not. With
greedy decoding the second replies must be identical token for token: the restored cache (loaded from the snapshot
service, not re-prefilled) is the same cache at the same RoPE positions.
"""

from __future__ import annotations

import httpx
import pytest

from devstack.stack import Stack
from tests.e2e.test_chat import new_session
from tests.support.chat_client import ChatClient

pytestmark = pytest.mark.e2e


def assistant_ids(frames: list[dict[str, object]], turn_id: int) -> list[object]:
    return [
        f["token_id"] for f in frames if f["type"] == "token" and f["role"] == "assistant" and f["turn_id"] == turn_id
    ]


def last_turn(frames: list[dict[str, object]]) -> int:
    done = frames[-1]
    assert done["type"] == "done", done
    return int(done["turn_id"])  # type: ignore[call-overload]


def auth(client: ChatClient) -> tuple[str, dict[str, str]]:
    assert client.session is not None
    return client.session["session_id"], {"Authorization": f"Bearer {client.session['token']}"}


def test_restore_continues_exactly_as_without_a_snapshot(stack: Stack) -> None:
    first, second = "Anna lives in Oslo and plays the cello.", "Where does Anna live?"
    with new_session(stack, max_new_tokens=10) as plain, new_session(stack, max_new_tokens=10) as saved:
        plain.chat(first)
        saved.chat(first)

        session_id, headers = auth(saved)
        base = f"{stack.gateway_url}/v1/sessions/{session_id}/snapshots"
        taken = httpx.post(base, headers=headers, timeout=120)
        assert taken.status_code in (200, 201), taken.text
        snapshot_id = taken.json()["snapshot_id"]
        assert taken.json()["tokens"] > 0

        listed = httpx.get(base, headers=headers, timeout=30).json()["snapshots"]
        assert snapshot_id in [s["snapshot_id"] for s in listed]

        restored = httpx.post(f"{base}/{snapshot_id}/restore", headers=headers, timeout=120)
        assert restored.status_code == 200, restored.text
        assert restored.json()["active_tokens"] == taken.json()["tokens"]

        expected = plain.chat(second)
        got = saved.chat(second)
        assert assistant_ids(got, last_turn(got)) == assistant_ids(expected, last_turn(expected))

        # Another session's token opens nothing of this one.
        _, other_headers = auth(plain)
        refused = httpx.post(f"{base}/{snapshot_id}/restore", headers=other_headers, timeout=30)
        assert refused.status_code in (401, 403, 404)
        assert httpx.get(base, headers=other_headers, timeout=30).status_code in (401, 403, 404)


def test_pruning_keeps_the_context_within_budget_and_the_chat_going(stack: Stack) -> None:
    budget = 90
    with new_session(stack, max_new_tokens=8, max_context_tokens=budget) as client:
        session_id, headers = auth(client)
        messages = [
            "The red house stands on the hill. It has seven windows. A dog sleeps by the door.",
            "My brother repairs old bicycles. He works every Sunday. His shop smells of oil.",
            "The lake freezes in January. Children skate on it. Nobody swims there in winter.",
        ]
        pruned: list[dict[str, object]] = []
        for text in messages:
            frames = client.chat(text)
            assert frames[-1]["type"] == "done", frames[-3:]
            pruned += [f for f in frames if f["type"] == "pruned"]
        assert pruned, "a budget of 90 tokens forces pruning in this conversation"

        export = httpx.get(f"{stack.gateway_url}/v1/sessions/{session_id}/export", headers=headers, timeout=30).json()
        entries = export["tokens"]
        deleted = {e["position"] for e in entries if e["deleted"]}
        announced = {p for f in pruned for p in f["positions"]}  # type: ignore[attr-defined]
        assert deleted == announced
        # The system prompt and the latest user message are never pruned.
        assert not any(e["deleted"] for e in entries if e["role"] == "system")
        last_user_turn = max(e["turn_id"] for e in entries if e["role"] == "user")
        assert not any(e["deleted"] for e in entries if e["turn_id"] == last_user_turn)
        active = [e for e in entries if not e["deleted"]]
        # Pruning runs at each step, so at most the tokens of the protected turns exceed the budget.
        protected = [e for e in active if e["role"] == "system" or e["turn_id"] >= last_user_turn]
        assert len(active) <= max(budget, len(protected))
