"""How the fault harness classifies a conversation, on made-up frames and exports (no stack needed)."""

from __future__ import annotations

from typing import Any

from tests.support.faults import HEADER, Conversation, Received, classify


def token(event_id: int, position: int, role: str, turn: int, text: str = "x", token_id: int = 7) -> dict[str, Any]:
    return {"type": "token", "event_id": event_id, "position": position, "token": text, "token_id": token_id,
            "role": role, "turn_id": turn, "sentence_id": 0}  # fmt: skip


def entry(position: int, role: str, turn: int, text: str = "x", token_id: int = 7) -> dict[str, Any]:
    return {"position": position, "token": text, "token_id": token_id, "role": role, "turn_id": turn,
            "sentence_id": 0, "deleted": False, "attention_score": 0.0}  # fmt: skip


def conversation(*frames: dict[str, Any], farewell: int | None = None) -> Conversation:
    """A conversation that asked once, then received `frames` at 1 s, 2 s, 3 s, …"""
    c = Conversation(stack=None)  # type: ignore[arg-type]
    c.asked = [(0.0, 0)]
    c.received = [Received(float(i + 1), f, farewell == i) for i, f in enumerate(frames)]
    return c


USER = [token(1, 0, "user", 0), token(2, 1, "user", 0)]
REPLY = [token(3, 2, "assistant", 1, HEADER), token(4, 3, "assistant", 1, "a"), token(5, 4, "assistant", 1, "b")]
EXPORT = {"tokens": [entry(0, "user", 0), entry(1, "user", 0), entry(2, "assistant", 1, HEADER),
                     entry(3, "assistant", 1, "a"), entry(4, "assistant", 1, "b")]}  # fmt: skip
DONE = {"type": "done", "event_id": 6, "turn_id": 1, "stats": {}}


def test_one_done_and_everything_shown_exported_is_completed_once() -> None:
    outcome = classify(conversation(*USER, *REPLY, DONE), EXPORT, fault_at=2.5)
    assert outcome.kind == "completed once"
    assert outcome.recovery_s == 0.5  # the reply's first token after the fault came at 3 s


def test_a_shown_token_missing_from_the_export_is_lost() -> None:
    export = {"tokens": EXPORT["tokens"][:-1]}
    assert classify(conversation(*USER, *REPLY, DONE), export).kind == "lost"


def test_a_reply_token_the_client_never_saw_is_lost() -> None:
    export = {"tokens": [*EXPORT["tokens"], entry(5, "assistant", 1, "c")]}
    assert classify(conversation(*USER, *REPLY, DONE), export).kind == "lost"


def test_two_dones_or_two_assistant_turns_are_duplicated() -> None:
    again = {**DONE, "event_id": 7}
    assert classify(conversation(*USER, *REPLY, DONE, again), EXPORT).kind == "duplicated"
    second = [entry(5, "assistant", 2, HEADER), entry(6, "assistant", 2, "a")]
    assert classify(conversation(*USER, *REPLY, DONE), {"tokens": [*EXPORT["tokens"], *second]}).kind == "duplicated"


def test_an_event_delivered_twice_is_duplicated() -> None:
    c = conversation(*USER, *REPLY, DONE)
    c.redelivered = 1
    assert classify(c, EXPORT).kind == "duplicated"


def test_an_error_without_done_and_nothing_missing_is_a_clear_error() -> None:
    error = {"type": "error", "event_id": 6, "code": "unavailable", "message": "tracker gone"}
    outcome = classify(conversation(*USER, *REPLY, error), EXPORT)
    assert (outcome.kind, outcome.errors) == ("clear error", ["unavailable"])


def test_no_answer_is_lost_and_a_farewell_is_not_an_answer() -> None:
    farewell = {"type": "error", "event_id": 0, "code": "unavailable", "message": "reconnect"}
    c = conversation(*USER, *REPLY, farewell, farewell=len(USER) + len(REPLY))
    assert not c.answered()
    assert classify(c, EXPORT).kind == "lost"


def test_the_end_of_an_abandoned_earlier_reply_is_not_this_messages() -> None:
    """The message closes the reply left open before it (its trailer, an `aborted` error), then gets its own."""
    earlier = [token(1, 0, "assistant", 0, "<|im_end|>", 2), {"type": "error", "event_id": 2, "code": "aborted"}]
    user = [token(3, 1, "user", 1), token(4, 2, "user", 1)]
    reply = [token(5, 3, "assistant", 2, HEADER), token(6, 4, "assistant", 2, "a")]
    done = {"type": "done", "event_id": 7, "turn_id": 2, "stats": {}}
    entries = [entry(0, "assistant", 0, "<|im_end|>", 2), entry(1, "user", 1), entry(2, "user", 1),
               entry(3, "assistant", 2, HEADER), entry(4, "assistant", 2, "a")]  # fmt: skip
    outcome = classify(conversation(*earlier, *user, *reply, done), {"tokens": entries})
    assert (outcome.kind, outcome.errors) == ("completed once", ["aborted"])
