"""Fuzzing the chat WebSocket (docs/websocket.md) with hypothesis-generated scripts of client frames.

A script is a few frames on one connection: well-formed and malformed `hello`, `user_message`, `settings` and `cancel`
frames with fields of every JSON type and size, unknown types, JSON that is not an object, not JSON at all, nested
thousands deep, huge numbers, NaN, lone surrogate escapes, binary frames, text frames that are not UTF-8, frames over
the soft limit and over the hard cap, in any order (before `hello`, `hello` twice, resumes with wrong tokens, unknown
sessions or impossible `last_event_id`s). Some scripts start with a valid `hello` (a new session, or a resume of the
*victim* session whose Redis keys are watched), so that what follows meets a bound session.

After each frame the fuzzer sends a marker (a frame of an unknown type that names it); frames are handled in order, so
everything the gateway answers to the frame arrives before the marker's `unknown_type` error. Each frame is then

- refused: an `error` frame with a documented code and a message, or a documented close (1009 over the hard cap,
  1007 for a text frame that is not UTF-8);
- accepted: no error (a `session` frame for a `hello`);
- a crash: `internal` or `unavailable` (every peer is up here, so either is a bug), another close, a frame without
  `type` or an integer `event_id`, event ids that go backwards, or no answer at all.

After each script: the victim session's keys are byte-identical unless a frame was accepted on it (refusals only add
`error` events addressed to their own connection), every accepted `user_message` left exactly one `generate` job for
its session on the job Stream and nothing else was enqueued, and the gateway still answers on a fresh connection.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from bench.fuzz.explore import weighted
from bench.fuzz.tally import Crash, Tally, Verdict
from bench.fuzz.target import EVENT_KEYS, Target, differences, dump_session, strict_json
from services.common import events, keys
from services.common.session_settings import UPDATE_ONLY
from services.tracker.settings import Settings

# The gateway's defaults (docs/websocket.md "Gateway settings"); the fuzz stack does not change them.
MAX_FRAME_BYTES = 64 * 1024
HARD_FRAME_BYTES = 1024 * 1024
MAX_MESSAGE_CHARS = 16_000
RECV_TIMEOUT_S = 15.0
CLOSE_TOO_BIG = 1009
CLOSE_NOT_UTF8 = 1007
# A client still sending a frame over the hard cap when the gateway closes may see the TCP connection reset before
# the close frame (1006, no close received): the kernel drops unread data on a reset.
CLOSE_ABNORMAL = 1006
# The client library logs a reset connection as an error of its own; the fuzzer judges closes itself.
QUIET = logging.getLogger("bench.fuzz.websocket.client")
QUIET.setLevel(logging.CRITICAL)
QUIET.propagate = False

# Every error code of the contract (docs/websocket.md "Error codes").
CODES = frozenset(
    {
        "bad_json",
        "unknown_type",
        "bad_frame",
        "frame_too_large",
        "no_session",
        "session_bound",
        "unknown_session",
        "unauthorized",
        "invalid_settings",
        "busy",
        "unavailable",
        "internal",
        "idle_timeout",
        "slow_consumer",
    }
)
# With every peer up, these mean the gateway (or a peer) failed on the input.
CRASH_CODES = frozenset({"internal", "unavailable"})
# Every session setting of the one schema, plus the update-only `clear_stop` flag.
SETTING_NAMES = (*Settings.model_fields, *UPDATE_ONLY)
MODES = ("mean", "max", "full", "none", "linear", "logarithmic", "additive", "exponential", "in_place", "reprefill")


@dataclass(frozen=True)
class Victim:
    """A session created before fuzzing whose keys are compared around every script."""

    session_id: str
    token: str


# ---- what a script is made of -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """One client frame: `text` goes in a text frame, `data` in a binary frame, or (`utf8=False`) in a text frame
    whose payload is not UTF-8."""

    text: str | None = None
    data: bytes | None = None
    utf8: bool = True
    label: str = ""

    def __repr__(self) -> str:
        shown = self.text if self.text is not None else self.data
        if shown is not None and len(shown) > 200:
            shown = f"{shown[:100]!r}...({len(shown)} in all)"
        kind = "text" if self.text is not None else "binary" if self.utf8 else "bad-utf8 text"
        return f"Send({kind}{', ' + self.label if self.label else ''}: {shown!r})"

    @property
    def size(self) -> int:
        return len(self.text.encode("utf-8", "surrogatepass")) if self.text is not None else len(self.data or b"")


def _json(value: Any) -> str:
    return json.dumps(value, allow_nan=True)


# Strings: printable, control characters, escapes that decode to lone surrogates, and sizes around the limits.
surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
texts = weighted(
    (4, st.text(max_size=20)),
    (2, st.text(st.characters(codec="utf-8"), max_size=40)),
    (1, st.text(surrogates, min_size=1, max_size=3)),
    (
        1,
        st.builds(
            lambda c, n: c * n,
            st.sampled_from("aé€😀 .\n"),
            st.integers(MAX_MESSAGE_CHARS - 2, MAX_MESSAGE_CHARS + 2),
        ),
    ),
)
numbers = st.one_of(
    st.integers(-5, 100),
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**31 - 1, 2**31, -(2**31) - 1, 2**63 - 1, 2**63, 10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-320, 1e308, 5e-324]),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def _with_extras(base: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A frame with, sometimes, fields the contract does not know (the server must ignore them)."""
    extras = st.dictionaries(st.text(max_size=6).filter(lambda k: k != "type"), json_values, max_size=2)
    return st.builds(lambda frame, more: {**more, **frame}, base, extras)


def hello_frames(victim: Victim) -> st.SearchStrategy[dict[str, Any]]:
    return _with_extras(
        st.fixed_dictionaries(
            {"type": st.just("hello")},
            optional={
                "session_id": st.one_of(st.just(victim.session_id), st.just("0" * 32), json_values),
                "token": st.one_of(st.just(victim.token), st.just(victim.token[:-1] + "A"), json_values),
                "last_event_id": st.one_of(st.integers(-3, 200), numbers, json_values),
            },
        )
    )


def setting_values() -> st.SearchStrategy[dict[str, Any]]:
    names = st.one_of(st.sampled_from(SETTING_NAMES), st.text(max_size=10))
    values = st.one_of(st.sampled_from(MODES), numbers, st.booleans(), st.lists(texts, max_size=3), json_values)
    return st.dictionaries(names, values, max_size=4)


def message_frames() -> st.SearchStrategy[dict[str, Any]]:
    return _with_extras(
        st.fixed_dictionaries(
            {
                "type": st.just("user_message"),
                "text": weighted((2, st.sampled_from(["Hello there.", "Hi."])), (2, texts), (1, json_values)),
            }
        )
    )


def settings_frames() -> st.SearchStrategy[dict[str, Any]]:
    return _with_extras(
        st.fixed_dictionaries({"type": st.just("settings"), "settings": st.one_of(setting_values(), json_values)})
    )


def other_frames() -> st.SearchStrategy[Any]:
    return st.one_of(
        _with_extras(st.just({"type": "cancel"})),
        _with_extras(st.fixed_dictionaries({"type": json_values})),
        json_values,  # often not an object
    )


def raw_texts() -> st.SearchStrategy[str]:
    """Text frames that are not one JSON object: garbage, deep nesting, huge numbers, sizes past the limits."""
    depth = st.integers(1, 60_000)
    return st.one_of(
        st.text(max_size=50),
        st.builds(lambda n: "[" * n + "]" * n, depth),
        st.builds(lambda n: '{"a":' * n + "1" + "}" * n, st.integers(1, 20_000)),
        st.builds(lambda n: '{"type":"settings","settings":{"boost":' + "[" * n + "]" * n + "}}", depth),
        st.builds(lambda n: "9" * n, st.integers(1, 10_000)),
        st.builds(lambda n: '{"type":"settings","settings":{"decay_rate":1' + "0" * n + "}}", st.integers(300, 5000)),
        st.sampled_from(["NaN", "Infinity", '{"type":"settings","settings":{"top_p":NaN}}', '{"type":"cancel"']),
        st.builds(
            lambda n: json.dumps({"type": "user_message", "text": "x" * n}),
            st.sampled_from([MAX_FRAME_BYTES - 40, MAX_FRAME_BYTES, MAX_FRAME_BYTES + 1, HARD_FRAME_BYTES + 1]),
        ),
    )


def sends(victim: Victim) -> st.SearchStrategy[Send]:
    frames = weighted((3, hello_frames(victim)), (4, message_frames()), (3, settings_frames()), (2, other_frames()))
    not_utf8 = st.builds(
        lambda head, b, tail: Send(data=head + b + tail, utf8=False),
        st.sampled_from([b"\xff", b"", b"\xed\xa0\x80"]),  # the last: a surrogate, which UTF-8 forbids
        st.binary(max_size=16),
        st.sampled_from([b"\xc3\x28", b"\xc3"]),
    )
    binary = st.one_of(
        st.builds(lambda f: Send(data=_json(f).encode("utf-8", "surrogatepass")), frames),
        st.builds(lambda b: Send(data=b), st.binary(max_size=64)),
    )
    return weighted(
        (12, st.builds(lambda f: Send(text=_json(f)), frames)),
        (3, st.builds(lambda t: Send(text=t, label="raw"), raw_texts())),
        (1, binary),
        (1, not_utf8),
    )


def scripts(victim: Victim) -> st.SearchStrategy[list[Send]]:
    opening = st.sampled_from(
        [
            [],
            [Send(text=_json({"type": "hello"}), label="new session")],
            [Send(text=_json({"type": "hello"}), label="new session")],
            [Send(text=_json({"type": "hello", "session_id": victim.session_id, "token": victim.token}))],
        ]
    )
    return st.builds(lambda first, rest: first + rest, opening, st.lists(sends(victim), min_size=1, max_size=5))


# ---- driving a script -----------------------------------------------------------------------------------------------


@dataclass
class Connection:
    """One socket and what the fuzzer knows about it."""

    ws: ClientConnection
    session_id: str | None = None
    last_event_id: int = 0
    markers: int = 0


@dataclass
class Answer:
    frames: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None


class WebSocketFuzzer:
    name = "websocket"

    def __init__(self, target: Target, victim: Victim, tally: Tally | None = None) -> None:
        self.target = target
        self.victim = victim
        self.tally = tally or Tally(self.name)
        self.redis = target.redis()
        self._baseline = self._victim_picture()

    def close(self) -> None:
        self.redis.close()

    # ---- invariants ---------------------------------------------------------------------------------------------

    def _victim_picture(self) -> dict[bytes, Any]:
        return dump_session(self.redis, self.victim.session_id, skip=EVENT_KEYS)

    def _victim_events_after(self, event_id: int) -> list[dict[str, Any]]:
        stream = keys.events_stream(self.victim.session_id)
        return [events.decode(i, f) for i, f in self.redis.xrange(stream, f"({event_id}-0", "+")]  # type: ignore[union-attr]

    def _last_event(self, session_id: str) -> int:
        raw = self.redis.get(keys.events_counter(session_id))
        return int(raw) if raw else 0  # type: ignore[arg-type]

    def _generating(self, session_id: str) -> bool:
        turn = self.redis.hget(f"{keys.session_prefix(session_id)}:meta", "gen_turn")
        return turn is not None and int(turn) >= 0  # type: ignore[arg-type]

    def _jobs(self) -> list[dict[str, str]]:
        entries = self.redis.xrange(keys.JOBS_STREAM)
        return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]  # type: ignore[union-attr]

    # ---- one script ---------------------------------------------------------------------------------------------

    def run(self, script: list[Send]) -> list[Verdict]:
        """Drives one script; records each frame's verdict; raises Crash at the first broken promise."""
        jobs_before = len(self._jobs())
        victim_events = self._last_event(self.victim.session_id)
        # A cancel changes a session only while it generates (the victim does once a message of it was accepted).
        touching = {"user_message", "settings"} | ({"cancel"} if self._generating(self.victim.session_id) else set())
        messages: list[str] = []  # sessions of the accepted user_messages, in order
        touched_victim = False
        verdicts = []
        conn = self._open()
        try:
            for send in script:
                verdict, accepted_on = self._one(conn, send)
                verdicts.append(verdict)
                if verdict is Verdict.ACCEPTED and accepted_on is not None:
                    kind = _frame_type(send)
                    if kind == "user_message":
                        messages.append(accepted_on)
                    if accepted_on == self.victim.session_id and kind in touching:
                        touched_victim = True
                if conn.ws.close_code is not None:
                    conn = self._open()
        finally:
            conn.ws.close()
        self._check_after(jobs_before, victim_events, messages, touched_victim)
        return verdicts

    def _open(self) -> Connection:
        return Connection(connect(self.target.ws_url, open_timeout=10, max_size=None, close_timeout=2, logger=QUIET))

    def _one(self, conn: Connection, send: Send) -> tuple[Verdict, str | None]:
        """Sends one frame and its marker; returns the verdict and, when accepted on a session, that session."""
        try:
            verdict, session = self._exchange(conn, send)
        except Crash as crash:
            self.tally.add(Verdict.CRASH, str(crash))
            raise
        self.tally.add(verdict)
        return verdict, session

    def _exchange(self, conn: Connection, send: Send) -> tuple[Verdict, str | None]:
        bound_before = conn.session_id
        try:
            if send.text is not None:
                conn.ws.send(send.text)
            else:
                conn.ws.send(send.data or b"", text=not send.utf8 or None)
        except ConnectionClosed:
            pass  # the close itself is judged below
        conn.markers += 1
        marker = f"~marker-{conn.markers}"
        answer = self._until_marker(conn, marker)
        expected_close = self._expected_close(send)
        if answer.close_code is not None:
            if answer.close_code == expected_close or (expected_close, answer.close_code) == (
                CLOSE_TOO_BIG,
                CLOSE_ABNORMAL,
            ):
                self._check_serving()
                return Verdict.REFUSED, None
            raise Crash(f"{send!r}: the connection closed with {answer.close_code} ({_shown(answer.frames)})")
        if expected_close is not None:
            raise Crash(f"{send!r}: expected the connection to close with {expected_close}, it stayed open")
        errors = [f for f in answer.frames if f["type"] == "error"]
        for error in errors:
            code, message = error.get("code"), error.get("message")
            if code not in CODES or not isinstance(message, str) or not message:
                raise Crash(f"{send!r}: an error frame without a documented code and a message: {error}")
            if code in CRASH_CODES:
                raise Crash(f"{send!r}: answered {code}: {message}")
        sessions = [f for f in answer.frames if f["type"] == "session"]
        if sessions and (errors or len(sessions) > 1 or bound_before is not None or _frame_type(send) != "hello"):
            raise Crash(f"{send!r}: a session frame that answers no first hello: {_shown(answer.frames)}")
        if errors:
            return Verdict.REFUSED, None
        if _frame_type(send) == "hello" and not sessions:
            raise Crash(f"{send!r}: a hello neither refused nor answered with a session")
        return Verdict.ACCEPTED, conn.session_id

    def _expected_close(self, send: Send) -> int | None:
        if send.data is not None and not send.utf8:
            return CLOSE_NOT_UTF8
        if send.size > HARD_FRAME_BYTES:
            return CLOSE_TOO_BIG
        return None

    def _until_marker(self, conn: Connection, marker: str) -> Answer:
        """Every frame the gateway sends up to the marker's refusal (or until the socket closes)."""
        answer = Answer()
        try:
            conn.ws.send(json.dumps({"type": marker}))
            deadline = time.monotonic() + RECV_TIMEOUT_S
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Crash(f"no answer within {RECV_TIMEOUT_S:g} s (frames so far: {_shown(answer.frames)})")
                raw = conn.ws.recv(timeout=left)
                frame = self._checked(conn, raw)
                if frame["type"] == "error" and repr(marker) in str(frame.get("message", "")):
                    return answer
                answer.frames.append(frame)
        except TimeoutError:
            raise Crash(f"no answer within {RECV_TIMEOUT_S:g} s (frames so far: {_shown(answer.frames)})") from None
        except ConnectionClosed as closed:
            answer.close_code = closed.rcvd.code if closed.rcvd is not None else 1006
            return answer

    def _checked(self, conn: Connection, raw: str | bytes) -> dict[str, Any]:
        """A server frame: a JSON object text frame with a type and an event id that never goes backwards."""
        if not isinstance(raw, str):
            raise Crash(f"the server sent a binary frame: {raw[:80]!r}")
        try:
            frame = strict_json(raw)
        except ValueError:
            raise Crash(f"the server sent a frame that is not JSON: {raw[:200]!r}") from None
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            raise Crash(f"a server frame without a type: {raw[:200]!r}")
        event_id = frame.get("event_id")
        if isinstance(event_id, bool) or not isinstance(event_id, int):
            raise Crash(f"a server frame without an integer event_id: {raw[:200]!r}")
        if conn.session_id is None and frame["type"] == "session":
            conn.session_id, conn.last_event_id = str(frame.get("session_id")), event_id
        elif conn.session_id is not None:
            if event_id <= conn.last_event_id:
                raise Crash(f"event id {event_id} after {conn.last_event_id}: {raw[:200]!r}")
            conn.last_event_id = event_id
        elif event_id != 0:
            raise Crash(f"a frame before any session with event id {event_id}: {raw[:200]!r}")
        if "connection" in frame:
            raise Crash(f"an error addressed to a connection leaked its address: {raw[:200]!r}")
        return frame

    def _check_serving(self) -> None:
        """After a close: a fresh connection is answered (a frame before hello is refused with no_session)."""
        with connect(self.target.ws_url, open_timeout=10, close_timeout=2, logger=QUIET) as ws:
            ws.send(json.dumps({"type": "cancel"}))
            reply = json.loads(ws.recv(timeout=RECV_TIMEOUT_S))
        if reply.get("code") != "no_session":
            raise Crash(f"after a close, a fresh connection answered {reply}")

    def _check_after(self, jobs_before: int, victim_events: int, messages: list[str], touched_victim: bool) -> None:
        dead = self.target.dead()
        if dead:
            raise Crash(f"services died: {dead}")
        new_jobs = self._jobs()[jobs_before:]
        if [(j.get("type"), j.get("session_id")) for j in new_jobs] != [("generate", s) for s in messages]:
            raise Crash(f"the job Stream gained {new_jobs}; accepted user messages were on {messages}")
        picture = self._victim_picture()
        if touched_victim:
            self._baseline = picture
            return
        changed = differences(self._baseline, picture)
        if changed:
            raise Crash(f"refused frames changed the victim session: {'; '.join(changed)}")
        for event in self._victim_events_after(victim_events):
            if event["type"] != "error" or "connection" not in event:
                raise Crash(f"refused frames added a {event['type']} event to the victim session: {event}")


def _frame_type(send: Send) -> str | None:
    raw = send.text if send.text is not None else None
    if raw is None or len(raw) > MAX_FRAME_BYTES:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value.get("type") if isinstance(value, dict) and isinstance(value.get("type"), str) else None


def _shown(frames: list[dict[str, Any]]) -> str:
    text = json.dumps(frames, default=str)
    return text if len(text) < 600 else text[:600] + "..."


def new_victim(target: Target) -> Victim:
    """A session of its own for the fuzzer to watch; its system prompt's events are read once so that it is whole."""
    with connect(target.ws_url, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "hello"}))
        session = json.loads(ws.recv(timeout=RECV_TIMEOUT_S))
    if session.get("type") != "session":
        raise RuntimeError(f"could not create a session: {session}")
    return Victim(session["session_id"], session["token"])
