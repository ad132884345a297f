"""Faults against the real, supervised stack, and what each conversation went through (tests/e2e/test_faults.py,
`python -m bench.faults`).

    with supervised_stack(workdir) as stack:
        result = run_fault(stack, FAULTS["SIGKILL tracker"], sessions=3)
        result.counts()  # {"completed once": 2, "clear error": 1, "lost": 0, "duplicated": 0}

`run_fault` opens chatting sessions, waits until every reply is under way, then kills (SIGKILL) or stalls
(SIGSTOP … SIGCONT) one process by its pid; the supervisor brings a killed service back, Ray a killed worker actor.
Each client follows its reply across lost connections (resuming with `last_event_id`, as the web UI does). Once
every reply has an answer and no job is pending in Redis, each conversation is classified by its WebSocket frames
and the session's export (`classify`):

- `completed once`: exactly one `done` for the message, one assistant turn, every token the client was shown is in
  the export (at its position, with its id) and every token of the reply in the export reached the client;
- `clear error`: an `error` for the message and no `done`, nothing the client saw missing;
- `lost`: a token the client saw is missing from the export (or the client never saw part of the reply), or neither
  `done` nor `error` came within the timeout;
- `duplicated`: two `done`s or two assistant turns for one user message, or an event delivered twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import psutil
import redis as redis_sync
from haloweave.inference.v1 import inference_pb2
from haloweave.inference.v1.inference_pb2_grpc import InferenceStub
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from devstack.stack import Stack
from services.common import keys
from services.inference.affinity import owner_key

Frame = dict[str, Any]
OUTCOMES = ("completed once", "clear error", "lost", "duplicated")
# Long, greedy replies: the fault lands while every one of them is being generated.
SETTINGS: dict[str, Any] = {"max_new_tokens": 48, "temperature": 0.0}
PROMPTS = (
    "List ten animals that live in the sea and say one thing about each.",
    "Name ten cities in Europe and one famous building in each.",
    "Give ten tips for growing tomatoes, one per line.",
    "Describe ten colours and an object of each colour.",
    "List ten musical instruments and how each makes its sound.",
    "Name ten fruits and say where each one grows.",
)
HEADER = "<|im_start|>"
WORKER_TITLE = "ray::WorkerActor"


# ---- the stack ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def supervised_stack(
    workdir: Path, env: dict[str, str] | None = None, log: bool = False, workers: int = 1
) -> Iterator[Stack]:
    """The whole system (real Redis with AOF, tracker, snapshot, inference with `workers` actors and the real model,
    gateway), each service restarted when it exits."""
    stack = Stack(workdir=workdir, supervise=True, env=env, log=log, workers=workers)
    with stack:
        yield stack


def worker_pids(stack: Stack) -> list[int]:
    """The inference worker actors' processes (Ray starts them under the driver, titled `ray::WorkerActor`)."""
    driver = psutil.Process(stack.procs["inference"].pid)
    pids = []
    for process in driver.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if process.cmdline()[:1] == [WORKER_TITLE] or process.name() == WORKER_TITLE:
                pids.append(process.pid)
    return pids


def owner_pid(stack: Stack, session_id: str) -> int | None:
    """The process of the worker actor that holds the session: its owner in Redis, that worker's pid from the
    inference service's Status; None while either is not known."""
    client = redis_sync.Redis.from_url(stack.redis_url, socket_timeout=2)
    try:
        owner = client.get(owner_key(session_id))
    finally:
        client.close()
    if owner is None:
        return None
    with grpc.insecure_channel(stack.inference_addr) as channel:
        status = InferenceStub(channel).Status(inference_pb2.StatusRequest(), timeout=5)
    pids = {w.worker_id: w.pid for w in status.workers if w.pid}
    return pids.get(owner.decode())


def target_pid(stack: Stack, target: str, session_id: str = "") -> int:
    """`worker`: the inference worker actor that holds `session_id` (the first actor when that is not known);
    otherwise the service's own process (the inference driver for `inference`)."""
    if target == "worker":
        pids = worker_pids(stack)
        if not pids:
            raise RuntimeError("no inference worker actor is running")
        owner = owner_pid(stack, session_id) if session_id else None
        return owner if owner in pids else pids[0]
    return stack.procs[target].pid


def pending_sessions(client: redis_sync.Redis) -> set[str]:
    """Sessions with a job no worker has taken yet or none has acknowledged, on the shared Stream or a worker's own."""
    streams = [keys.JOBS_STREAM, *(s.decode() for s in client.scan_iter(match="hw:inf:w:*:jobs", _type="stream"))]
    sessions: set[str] = set()
    for stream in streams:
        try:
            groups = client.xinfo_groups(stream)
        except redis_sync.ResponseError:
            continue
        for group in groups:
            ids = [p["message_id"] for p in client.xpending_range(stream, group["name"], "-", "+", 1000)]
            entries = [entry for entry_id in ids for entry in client.xrange(stream, entry_id, entry_id)]
            last = group["last-delivered-id"].decode()
            entries += client.xrange(stream, f"({last}", "+")  # not delivered to any worker yet
            sessions.update(fields.get(b"session_id", b"").decode() for _id, fields in entries)
    return sessions


def wait_quiet(stack: Stack, session_ids: set[str], timeout: float) -> bool:
    """Waits until none of these sessions has a pending job (twice in a row, half a second apart)."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while time.monotonic() < deadline:
        client = redis_sync.Redis.from_url(stack.redis_url, socket_timeout=2)
        try:
            quiet = quiet + 1 if not pending_sessions(client) & session_ids else 0
        except redis_sync.RedisError:
            quiet = 0
        finally:
            client.close()
        if quiet >= 2:
            return True
        time.sleep(0.5)
    return False


# ---- one client --------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Received:
    at: float  # time.monotonic() when the frame arrived
    frame: Frame
    farewell: bool = False  # the last frame before the server closed the connection


class Conversation:
    """One chat session whose frames a thread collects; it reconnects (hello + last_event_id) when cut off.

    Frames of the session Stream are kept once each: one that arrives again (an id not above the last seen) is
    counted in `redelivered`, which the protocol rules out.
    """

    def __init__(self, stack: Stack, settings: dict[str, Any] | None = None, connect_timeout: float = 60) -> None:
        self.stack = stack
        self.settings = {**SETTINGS, **(settings or {})}
        self.connect_timeout = connect_timeout
        self.received: list[Received] = []
        self.asked: list[tuple[float, int]] = []  # (when, index in received) of each user message
        self.redelivered = 0
        self.reconnects = 0
        self.session_id = ""
        self.token = ""
        self.last_event_id = 0
        self._ws: ClientConnection | None = None
        self._connected = threading.Event()
        self._closing = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # ---- connection --------------------------------------------------------------------------------------------
    def open(self) -> Conversation:
        """Creates the session and applies the settings; the reader thread runs from here on."""
        ws = connect(self.stack.ws_url, max_size=None, open_timeout=30)
        ws.send(json.dumps({"type": "hello"}))
        session = json.loads(ws.recv(timeout=30))
        if session.get("type") != "session":
            raise RuntimeError(f"no session: {session}")
        self.session_id, self.token = session["session_id"], session["token"]
        ws.send(json.dumps({"type": "settings", "settings": self.settings}))
        self._ws = ws
        self._connected.set()
        self._thread = threading.Thread(target=self._read, name=f"conversation-{self.session_id[:8]}", daemon=True)
        self._thread.start()
        wanted = self.settings.items()
        self.wait_for(lambda f: f["type"] == "settings" and wanted <= f["settings"].items(), 30, "settings applied")
        return self

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            if self._ws is not None:
                self._ws.close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _read(self) -> None:
        while not self._closing:
            ws = self._ws
            try:
                assert ws is not None
                raw = ws.recv()
            except (ConnectionClosed, AssertionError, OSError):
                if self._closing:
                    return
                with self._lock:
                    if self.received:
                        self.received[-1].farewell = self.received[-1].frame["type"] == "error"
                self._reconnect()
                continue
            self._keep(json.loads(raw))

    def _keep(self, frame: Frame) -> None:
        with self._lock:
            event_id = int(frame.get("event_id") or 0)
            if frame["type"] != "session" and event_id:
                if event_id <= self.last_event_id:
                    self.redelivered += 1
                    return
                self.last_event_id = event_id
            self.received.append(Received(time.monotonic(), frame))

    def _reconnect(self) -> None:
        """Resumes the session on a new connection, retrying while the gateway (or what it needs) is down."""
        self._connected.clear()
        deadline = time.monotonic() + self.connect_timeout
        while not self._closing and time.monotonic() < deadline:
            try:
                ws = connect(self.stack.ws_url, max_size=None, open_timeout=5)
                hello = {"type": "hello", "session_id": self.session_id, "token": self.token}
                ws.send(json.dumps({**hello, "last_event_id": self.last_event_id}))
                reply = json.loads(ws.recv(timeout=10))
                if reply.get("type") != "session":
                    ws.close()
                    raise RuntimeError(f"resume refused: {reply}")
            except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake, InvalidStatus, RuntimeError):
                time.sleep(0.5)
                continue
            self._ws = ws
            self.reconnects += 1
            self._keep(reply)
            self._connected.set()
            return

    # ---- messages ----------------------------------------------------------------------------------------------
    def ask(self, text: str, timeout: float = 60) -> None:
        """Sends a user message (once connected)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._connected.wait(max(0.0, deadline - time.monotonic())):
                break
            try:
                assert self._ws is not None
                with self._lock:
                    self.asked.append((time.monotonic(), len(self.received)))
                self._ws.send(json.dumps({"type": "user_message", "text": text}))
                return
            except (ConnectionClosed, OSError):
                self.asked.pop()
                time.sleep(0.2)
        raise TimeoutError(f"could not send a message in session {self.session_id} within {timeout:.0f} s")

    def frames(self, message: int = -1) -> list[Received]:
        """What arrived after user message `message` was sent, up to the next one."""
        with self._lock:
            start = self.asked[message][1]
            end = self.asked[message + 1][1] if message != -1 and message + 1 < len(self.asked) else None
            return list(self.received[start:end])

    def answered(self, message: int = -1) -> bool:
        """Whether the message has its `done` or an `error` that is not a connection's farewell."""
        return any(
            r.frame["type"] == "done" or (r.frame["type"] == "error" and not r.farewell) for r in self.frames(message)
        )

    def shown_tokens(self, message: int = -1) -> int:
        """Generated reply tokens the client has seen for the message (the assistant header not counted)."""
        shown = [
            r.frame["token"]
            for r in self.frames(message)
            if r.frame["type"] == "token" and r.frame["role"] == "assistant"
        ]
        return len(shown) - shown.index("\n") - 1 if "\n" in shown else 0  # the header ends with its newline

    def configure(self, settings: dict[str, Any], timeout: float = 30) -> None:
        """Changes settings and waits until the session says they apply."""
        with self._lock:
            since = len(self.received)
        assert self._connected.wait(timeout) and self._ws is not None
        self._ws.send(json.dumps({"type": "settings", "settings": settings}))
        wanted = settings.items()
        self.wait_for(lambda f: f["type"] == "settings" and wanted <= f["settings"].items(), timeout, "settings", since)

    def wait_for(self, done: Callable[[Frame], bool], timeout: float, what: str, since: int = 0) -> Received:
        """The first frame from index `since` on for which `done` is true."""
        deadline = time.monotonic() + timeout
        seen = since
        while time.monotonic() < deadline:
            with self._lock:
                fresh = self.received[seen:]
                seen += len(fresh)
            for item in fresh:
                if done(item.frame):
                    return item
            time.sleep(0.05)
        raise TimeoutError(f"session {self.session_id}: no {what} within {timeout:.0f} s")

    def export(self, timeout: float = 60) -> dict[str, Any]:
        url = f"{self.stack.gateway_url}/v1/sessions/{self.session_id}/export"
        headers = {"Authorization": f"Bearer {self.token}"}
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                answer = httpx.get(url, headers=headers, timeout=10)
                if answer.status_code == 200:
                    body: dict[str, Any] = answer.json()
                    return body
                last = f"{answer.status_code} {answer.text[:200]}"
            except httpx.HTTPError as error:
                last = str(error)
            time.sleep(0.5)
        raise TimeoutError(f"no export of session {self.session_id} within {timeout:.0f} s: {last}")


# ---- what happened -----------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Outcome:
    kind: str  # one of OUTCOMES
    detail: str = ""
    recovery_s: float | None = None  # fault → first token after it, or → the clear error; None: no reply in flight
    errors: list[str] = field(default_factory=list)  # error codes the client saw for the message


def classify(
    conversation: Conversation, export: dict[str, Any], message: int = -1, fault_at: float | None = None
) -> Outcome:
    received = conversation.frames(message)
    frames = [r.frame for r in received]
    errors = [r.frame for r in received if r.frame["type"] == "error" and not r.farewell]
    codes = [str(e.get("code")) for e in errors]
    user_turns = {f["turn_id"] for f in frames if f["type"] == "token" and f["role"] == "user"}
    user_turn = min(user_turns) if user_turns else None

    def ours(frame: Frame) -> bool:
        """Not the end of an earlier reply (the next message closes an abandoned one: its trailer, its error)."""
        return user_turn is None or frame["turn_id"] > user_turn

    dones = [f for f in frames if f["type"] == "done" and ours(f)]
    shown = [f for f in frames if f["type"] == "token" and f["role"] == "assistant" and ours(f)]
    recovery = None
    if fault_at is not None:
        replied = [
            r for r in received if (r.frame["type"] == "done" or r.frame.get("role") == "assistant") and ours(r.frame)
        ]
        after = [r.at for r in replied if r.at > fault_at]
        ended = [r.at for r in received if r.at > fault_at and r.frame["type"] == "error" and not r.farewell]
        first = min(after + ([min(ended)] if not dones and ended else []), default=None)
        recovery = None if first is None else first - fault_at

    def outcome(kind: str, detail: str = "") -> Outcome:
        return Outcome(kind, detail, recovery, codes)

    # The reply in the export: assistant entries after this message's user turn, before the next user turn.
    entries = export.get("tokens", [])
    if user_turn is not None:
        later_users = [e["turn_id"] for e in entries if e["role"] == "user" and e["turn_id"] > user_turn]
        until = min(later_users, default=None)
        reply = [
            e
            for e in entries
            if e["role"] == "assistant" and e["turn_id"] > user_turn and (until is None or e["turn_id"] < until)
        ]
    else:
        reply = []
    exported = {e["position"]: e["token_id"] for e in reply}
    shown_at = [f["position"] for f in shown]
    missing = [f for f in shown if exported.get(f["position"]) != f["token_id"]]
    unseen = sorted(set(exported) - set(shown_at))
    turns = {e["turn_id"] for e in reply}
    headers = sum(1 for e in reply if e["token"] == HEADER)

    if missing:
        return outcome("lost", f"{len(missing)} shown token(s) not in the export, e.g. {missing[0]}")
    if conversation.redelivered or len(shown_at) != len(set(shown_at)):
        return outcome("duplicated", f"events delivered again: {conversation.redelivered}")
    if len(dones) > 1 or len(turns) > 1 or headers > 1:
        return outcome("duplicated", f"{len(dones)} done, {len(turns)} assistant turn(s), {headers} header(s)")
    if dones:
        if unseen:
            return outcome("lost", f"{len(unseen)} token(s) of the reply never reached the client")
        return outcome("completed once")
    if errors:
        if unseen and shown:
            return outcome("lost", f"{len(unseen)} token(s) of the reply never reached the client")
        return outcome("clear error", ", ".join(codes))
    return outcome("lost", f"no done or error ({len(shown)} reply token(s) shown)")


# ---- faults ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Fault:
    name: str
    target: str  # a service of the stack (redis, tracker, snapshot, inference, gateway) or `worker`
    action: str = "kill"  # kill: SIGKILL; stall: SIGSTOP, `stall_s`, SIGCONT; none: the same round, no fault
    stall_s: float = 0.0


NO_FAULT = Fault("no fault", "", "none")


def faults(stall_s: float = 30.0) -> dict[str, Fault]:
    """Every fault the benchmark runs, by name; the stalls last `stall_s`."""
    kills = [
        Fault(f"SIGKILL {target}", target)
        for target in ("tracker", "gateway", "snapshot", "redis", "inference", "worker")
    ]
    stalls = [Fault(f"SIGSTOP {target} {stall_s:g} s", target, "stall", stall_s) for target in ("tracker", "redis")]
    return {fault.name: fault for fault in kills + stalls}


FAULTS = faults()


@dataclass
class Result:
    fault: Fault
    outcomes: list[Outcome]  # the replies that were in flight when the fault came, one per conversation
    after: list[Outcome]  # a second message of each conversation, once the fault is over
    back_s: float | None  # the supervisor's restart, or Ray's new worker actor, or the stall's end: fault → serving
    took_s: float
    trace: list[dict[str, Any]] = field(default_factory=list)  # per conversation: frames (with times) and export

    def dump(self, path: Path) -> None:
        """Writes the frames and exports behind the outcomes, for reading a failure."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"fault": self.fault.name, "conversations": self.trace}, indent=1))

    def counts(self, outcomes: list[Outcome] | None = None) -> dict[str, int]:
        chosen = self.outcomes if outcomes is None else outcomes
        return {kind: sum(1 for o in chosen if o.kind == kind) for kind in OUTCOMES}

    def contexts_at_fault(self) -> list[int]:
        """Per conversation, the tokens its context held when the fault struck (largest position shown + 1)."""
        sizes = []
        for conversation in self.trace:
            shown = [
                f["position"]
                for f in conversation["frames"]
                if f["type"] == "token" and f["at"] <= conversation["struck_at"]
            ]
            if shown:
                sizes.append(max(shown) + 1)
        return sizes

    def recoveries(self) -> list[float]:
        return [o.recovery_s for o in self.outcomes if o.recovery_s is not None]

    def describe(self) -> str:
        lines = [f"{self.fault.name}: {self.counts()} (then {self.counts(self.after)}), back after {self.back_s}"]
        for index, (first, second) in enumerate(zip(self.outcomes, self.after, strict=False)):
            lines.append(
                f"  conversation {index}: {first.kind} ({first.detail}; errors {first.errors}; "
                f"recovery {first.recovery_s}), then {second.kind} ({second.detail})"
            )
        return "\n".join(lines)


def inject(stack: Stack, fault: Fault, session_id: str = "") -> tuple[float, float | None]:
    """Applies the fault (a worker fault to the worker of `session_id`); (when it struck, when the target served
    again or None when that is not known here)."""
    if fault.action == "none":
        now = time.monotonic()
        return now, now
    pid = target_pid(stack, fault.target, session_id)
    if fault.action == "stall":
        struck = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(fault.stall_s)
        finally:
            os.kill(pid, signal.SIGCONT)
        return struck, time.monotonic()
    before = set(worker_pids(stack)) if fault.target == "worker" else set()
    struck = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    if fault.target == "worker":  # Ray restarts the actor: a new process under the driver
        deadline = struck + 120
        while time.monotonic() < deadline:
            if set(worker_pids(stack)) - before - {pid}:
                return struck, time.monotonic()
            time.sleep(0.1)
        return struck, None
    assert stack.supervisor is not None
    with contextlib.suppress(TimeoutError):
        return struck, stack.supervisor.wait_back(fault.target, struck, timeout=300).at
    return struck, None


def run_fault(
    stack: Stack,
    fault: Fault,
    sessions: int = 3,
    settings: dict[str, Any] | None = None,
    reply_timeout: float = 60.0,
    say: Callable[[str], None] | None = None,
    then: dict[str, Any] | None = None,
    strike_after: int = 2,
) -> Result:
    """One round: `sessions` conversations each ask; the fault strikes once every reply has shown `strike_after`
    tokens; each reply is followed to its end, then every conversation asks again (the system must serve after the
    fault), with the settings `then` if given (a short reply is enough to show it)."""
    say = say or (lambda message: None)
    began = time.monotonic()
    conversations = [Conversation(stack, settings).open() for _ in range(sessions)]
    try:
        for index, conversation in enumerate(conversations):
            conversation.ask(PROMPTS[index % len(PROMPTS)])
        wait_all(conversations, lambda c: c.shown_tokens() >= strike_after or c.answered(), timeout=120)
        say(f"{fault.name}: striking")
        struck, back = inject(stack, fault, conversations[0].session_id)
        say(f"{fault.name}: target back after {None if back is None else round(back - struck, 1)} s")
        settle(stack, conversations, reply_timeout)
        outcomes = [classify(c, c.export(), -1, struck) for c in conversations]
        for index, conversation in enumerate(conversations):
            if then:
                conversation.configure(then)
            conversation.ask(PROMPTS[(index + 1) % len(PROMPTS)])
        settle(stack, conversations, reply_timeout)
        exports = [c.export() for c in conversations]
        after = [classify(c, export, -1) for c, export in zip(conversations, exports, strict=True)]
        back_s = None if back is None else back - struck
        trace = [
            {
                "session_id": c.session_id,
                "struck_at": struck,
                "asked_at": [at for at, _index in c.asked],
                "frames": [{"at": r.at, "farewell": r.farewell, **r.frame} for r in c.received],
                "redelivered": c.redelivered,
                "export": export,
            }
            for c, export in zip(conversations, exports, strict=True)
        ]
        return Result(fault, outcomes, after, back_s, time.monotonic() - began, trace)
    finally:
        for conversation in conversations:
            conversation.close()


def wait_all(conversations: list[Conversation], done: Callable[[Conversation], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(done(c) for c in conversations):
            return True
        time.sleep(0.05)
    return False


def settle(stack: Stack, conversations: list[Conversation], timeout: float) -> None:
    """Until every latest message has its answer (or `timeout`), then until none of their jobs is pending, then a
    moment for late frames (a second `done` would arrive here). A reply still unanswered is stuck: its job stays
    pending, so there is no quiet to wait for."""
    if wait_all(conversations, lambda c: c.answered(), timeout):
        wait_quiet(stack, {c.session_id for c in conversations}, timeout=min(timeout, 20.0))
    time.sleep(1.0)


def summary(results: list[Result]) -> dict[str, Any]:
    """Counts and recovery times over repeats of one fault."""
    recoveries = [r for result in results for r in result.recoveries()]
    counts = {kind: sum(result.counts()[kind] for result in results) for kind in OUTCOMES}
    after = {kind: sum(result.counts(result.after)[kind] for result in results) for kind in OUTCOMES}
    return {
        "counts": counts,
        "after": after,
        "recovery_median_s": statistics.median(recoveries) if recoveries else None,
        "recovery_max_s": max(recoveries) if recoveries else None,
        "recovery_spread_s": max(recoveries) - min(recoveries) if recoveries else None,
        "back_median_s": statistics.median(b) if (b := [r.back_s for r in results if r.back_s is not None]) else None,
    }
