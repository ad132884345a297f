"""Fuzzing the tracker's gRPC API (protos/haloweave/tracker/v1/tracker.proto) with generated messages and raw bytes.

Each example creates a scratch session (a system prompt and a user message) and makes one call on it or on an
invented session id: a unary call with random field values (empty, huge and unicode ids, negative and huge numbers,
NaN and infinite doubles, settings out of range, restores of impossible dictionaries), a Generate stream of random
messages (frames before Open, steps out of order, attention rows of the wrong length or with NaN, infinite or negative
values, `full` tensors of the wrong size, recall probes, Finish and Fail with odd fields, empty messages), or bytes that
are no message at all.

A call is accepted (an answer), refused (a status that names the problem: INVALID_ARGUMENT, NOT_FOUND,
FAILED_PRECONDITION, ...), or a crash (UNKNOWN or INTERNAL, i.e. an unhandled exception; no answer; a server that no
longer passes its health check). A refused call must leave the session's Redis keys byte-identical (in a Generate
stream: what the refused message found; the stream's end then marks the open reply orphaned, by design) and must
create nothing. An accepted one must leave the session usable (a following message and export answer) and every event
it appended readable by a browser (strict JSON).
"""

from __future__ import annotations

import json
import queue
from dataclasses import dataclass, field
from typing import Any

import grpc
from haloweave.tracker.v1 import tracker_pb2 as pb
from haloweave.tracker.v1 import tracker_pb2_grpc
from hypothesis import strategies as st

from bench.fuzz.explore import weighted
from bench.fuzz.grpc_common import (
    CALL_TIMEOUT_S,
    DOUBLES,
    FLOAT32,
    INT32,
    INT64,
    TEXTS,
    UINT32,
    check_health,
    corrupt,
    judge,
    open_channel,
    raw_stream,
    raw_unary,
)
from bench.fuzz.tally import Crash, Tally, Verdict
from bench.fuzz.target import STREAM_END_FIELDS, Target, differences, dump_session, strict_json
from services.common import keys, session_settings

SERVICE = "/haloweave.tracker.v1.Tracker/"
UNARY = ("CreateSession", "GetSession", "AppendMessage", "GetContext", "GetSettings", "UpdateSettings", "Cancel")
UNARY += ("Export", "RestoreState")
MODES = ("mean", "max", "last_layer", "full", "none", "linear", "additive", "exponential", "reprefill", "tova")

# Stand-ins for the scratch session's id, filled in when the call is made.
SCRATCH = "<scratch>"


def session_ids() -> st.SearchStrategy[str]:
    return weighted((4, st.just(SCRATCH)), (1, st.sampled_from(["0" * 32, ""])), (1, TEXTS))


def settings_messages() -> st.SearchStrategy[pb.Settings]:
    """Settings as the proto carries them, one JSON object: every setting of the schema (a new one included by
    itself) with values of its JSON type or another, out of range, NaN or infinite; unknown names; and text that is
    no JSON object at all."""
    strings = st.one_of(st.sampled_from(MODES), TEXTS)
    by_type: dict[str, st.SearchStrategy[Any]] = {
        "integer": st.one_of(INT32, INT64),
        "number": DOUBLES,
        "string": strings,
        "boolean": st.booleans(),
        "array": st.lists(TEXTS, max_size=20),
    }
    properties = session_settings.json_schema()["properties"]
    fields: dict[str, st.SearchStrategy[Any]] = {
        name: weighted((8, by_type[spec.get("type", "string")]), (1, st.one_of(*by_type.values())), (1, st.none()))
        for name, spec in properties.items()
    }
    fields["clear_stop"] = st.booleans()
    objects = st.fixed_dictionaries({}, optional=fields).map(lambda values: json.dumps(values))
    unknown = st.dictionaries(TEXTS, INT32, min_size=1, max_size=2).map(json.dumps)
    raw = st.text(st.characters(codec="utf-8"), max_size=40)  # protobuf strings hold no lone surrogate
    texts = weighted((12, objects), (1, unknown), (1, raw), (1, st.sampled_from(["", "[]", "null", "{", "1"])))
    return texts.map(lambda text: pb.Settings(json=text))


def token_entries() -> st.SearchStrategy[pb.TokenEntry]:
    return st.builds(
        pb.TokenEntry,
        token=TEXTS,
        token_id=st.one_of(st.integers(0, 49151), INT32),
        position=INT64,
        attention_score=DOUBLES,
        turn_id=INT32,
        sentence_id=INT32,
        role=st.one_of(st.sampled_from(["system", "user", "assistant"]), TEXTS),
        deleted=st.booleans(),
    )


def ordered_entries() -> st.SearchStrategy[list[pb.TokenEntry]]:
    """Mostly plausible dictionaries (increasing positions, turns in order), with one field made odd."""

    def build(n: int, start: int, gap: int, poison: tuple[int, str, Any] | None) -> list[pb.TokenEntry]:
        entries = [
            pb.TokenEntry(
                token="a.",
                token_id=28,
                position=min(start + i * gap, 2**63 - 1),
                turn_id=i // 3,
                sentence_id=0,
                role="user",
            )
            for i in range(n)
        ]
        if poison is not None and entries:
            index, name, value = poison
            setattr(entries[index % n], name, value)
        return entries

    poisons = st.one_of(
        st.none(),
        st.tuples(st.integers(0, 50), st.just("position"), INT64),
        st.tuples(st.integers(0, 50), st.just("attention_score"), DOUBLES),
        st.tuples(st.integers(0, 50), st.just("token_id"), INT32),
        st.tuples(st.integers(0, 50), st.just("turn_id"), INT32),
        st.tuples(st.integers(0, 50), st.just("sentence_id"), INT32),
        st.tuples(st.integers(0, 50), st.just("role"), TEXTS),
        st.tuples(st.integers(0, 50), st.just("token"), TEXTS),
    )
    starts = st.one_of(st.integers(0, 100), st.sampled_from([2**31, 2**62, 2**63 - 10, -5]))
    return st.builds(build, st.integers(0, 12), starts, st.sampled_from([1, 2, 1000]), poisons)


@dataclass(frozen=True)
class Unary:
    method: str
    request: Any

    def __repr__(self) -> str:
        return f"Unary({self.method}, {_short(self.request)})"


@dataclass(frozen=True)
class FrameSpec:
    """A Frame whose attention is sized from the active context when it is sent: `delta` values more or fewer."""

    step: int | None  # None: the step the tracker expects next
    token_id: int
    delta: int
    fill: str  # uniform | zeros | random
    values: tuple[float, ...]  # used by `random`; cycled
    poison: tuple[int, float] | None  # (index, value) written over one value
    full: tuple[int, int, int, bytes] | None  # (layers, heads, byte delta, fp16 pattern) instead of a vector


@dataclass(frozen=True)
class ProbeSpec:
    cold_positions: tuple[int, ...]
    cold_scores: tuple[float, ...]
    active_delta: int
    active_value: float


@dataclass(frozen=True)
class Stream:
    messages: tuple[Any, ...]  # pb.GenerateRequest, FrameSpec or ProbeSpec
    settings: pb.Settings | None = None  # applied to the session first (when the tracker accepts them)

    def __repr__(self) -> str:
        first = f"settings {_short(self.settings)}; " if self.settings is not None else ""
        return f"Stream({first}{', '.join(_short(m) for m in self.messages)})"


@dataclass(frozen=True)
class Raw:
    method: str
    payloads: tuple[bytes, ...]


def unary_calls() -> st.SearchStrategy[Unary]:
    ref = st.builds(lambda s: pb.SessionRef(session_id=s), session_ids())
    return st.one_of(
        st.builds(
            lambda s, p: Unary("CreateSession", pb.CreateSessionRequest(settings=s, system_prompt=p)),
            settings_messages(),
            TEXTS,
        ),
        st.builds(lambda s: Unary("CreateSession", pb.CreateSessionRequest(settings=s)), settings_messages()),
        st.builds(Unary, st.sampled_from(["GetSession", "GetContext", "GetSettings", "Cancel", "Export"]), ref),
        st.builds(
            lambda s, r, t: Unary("AppendMessage", pb.AppendMessageRequest(session_id=s, role=r, text=t)),
            session_ids(),
            st.one_of(st.sampled_from(["user", "system", "assistant"]), TEXTS),
            st.one_of(st.just("Hello there."), TEXTS, st.just(" "), st.just("x" * 1_000_001)),
        ),
        st.builds(
            lambda s, v: Unary("UpdateSettings", pb.UpdateSettingsRequest(session_id=s, settings=v)),
            session_ids(),
            settings_messages(),
        ),
        st.builds(
            lambda s, v, tokens, n: Unary(
                "RestoreState",
                pb.RestoreStateRequest(
                    session_id=s, state=pb.ExportResponse(settings=v, tokens=tokens, next_position=n)
                ),
            ),
            session_ids(),
            settings_messages(),
            st.one_of(ordered_entries(), st.lists(token_entries(), max_size=6)),
            INT64,
        ),
    )


def _fp16(pattern: int) -> bytes:
    return int(pattern).to_bytes(2, "little")


def generate_messages() -> st.SearchStrategy[Any]:
    frames = st.builds(
        FrameSpec,
        step=weighted((3, st.none()), (1, UINT32)),
        token_id=st.one_of(st.integers(0, 49151), INT32),
        delta=st.sampled_from([0, 0, 0, 0, -1, 1, -1000]),
        fill=st.sampled_from(["uniform", "zeros", "random"]),
        values=st.lists(FLOAT32, min_size=1, max_size=4).map(tuple),
        poison=st.one_of(st.none(), st.tuples(st.integers(0, 10_000), FLOAT32)),
        full=weighted(
            (2, st.none()),
            (
                1,
                st.tuples(
                    st.integers(0, 3) | UINT32,
                    st.integers(0, 3) | UINT32,
                    st.sampled_from([0, 0, 0, -2, 2, 1]),
                    st.sampled_from([0x3C00, 0x0000, 0x7C00, 0x7E00, 0xFC00, 0x8001, 0x0001]).map(_fp16),
                ),
            ),
        ),
    )
    probes = st.builds(
        ProbeSpec,
        cold_positions=st.lists(INT64, max_size=4).map(tuple),
        cold_scores=st.lists(FLOAT32, max_size=4).map(tuple),
        active_delta=st.sampled_from([0, 0, -1, 1]),
        active_value=FLOAT32,
    )
    opens = st.builds(
        lambda s, j: pb.GenerateRequest(open=pb.Open(session_id=s, job_id=j)),
        session_ids(),
        st.one_of(st.just("job-1"), st.just("job-2"), st.just(""), TEXTS),
    )
    finishes = st.builds(
        lambda r, t, a, b: pb.GenerateRequest(
            finish=pb.Finish(reason=r, tokens=t, time_to_first_token_s=a, tokens_per_s=b)
        ),
        st.one_of(st.sampled_from(["eos", "length", "stop", "cancelled", ""]), TEXTS),
        UINT32,
        DOUBLES,
        DOUBLES,
    )
    fails = st.builds(lambda c, m: pb.GenerateRequest(fail=pb.Fail(code=c, message=m)), TEXTS, TEXTS)
    return weighted((6, frames), (1, probes), (1, opens), (1, finishes), (1, fails), (1, st.just(pb.GenerateRequest())))


def streams() -> st.SearchStrategy[Stream]:
    valid_open = pb.GenerateRequest(open=pb.Open(session_id=SCRATCH, job_id="job-1"))
    opening = st.sampled_from([(), (valid_open,), (valid_open,), (valid_open,)])
    rest = st.lists(generate_messages(), min_size=1, max_size=6)
    settings = weighted((2, st.none()), (1, settings_messages()))
    return st.builds(lambda first, more, s: Stream((*first, *more), s), opening, rest, settings)


def raw_calls() -> st.SearchStrategy[Raw]:
    valid = pb.SessionRef(session_id="0" * 32).SerializeToString()
    frame = pb.GenerateRequest(frame=pb.Frame(step=0, token_id=5, attention=[0.5, 0.5])).SerializeToString()
    return st.one_of(
        st.builds(lambda m, p: Raw(m, (p,)), st.sampled_from(UNARY), corrupt(valid)),
        st.builds(lambda ps: Raw("Generate", tuple(ps)), st.lists(corrupt(frame), min_size=1, max_size=3)),
    )


def calls() -> st.SearchStrategy[Unary | Stream | Raw]:
    return st.one_of(unary_calls(), streams(), raw_calls())


# ---- driving a call -------------------------------------------------------------------------------------------------


@dataclass
class Context:
    """What the fuzzer tracks of an open Generate stream, to size the next frame."""

    active: int = 0
    step: int = 0
    opened: bool = False


@dataclass
class Scratch:
    session_id: str
    picture: dict[bytes, Any] = field(default_factory=dict)


class TrackerFuzzer:
    name = "tracker-grpc"

    def __init__(self, target: Target, tally: Tally | None = None) -> None:
        self.target = target
        self.tally = tally or Tally(self.name)
        self.channel = open_channel(target.tracker_addr)
        self.stub = tracker_pb2_grpc.TrackerStub(self.channel)
        self.redis = target.redis()

    def close(self) -> None:
        self.channel.close()
        self.redis.close()

    def _scratch(self) -> str:
        info = self.stub.CreateSession(pb.CreateSessionRequest(system_prompt="Be brief."), timeout=CALL_TIMEOUT_S)
        request = pb.AppendMessageRequest(session_id=info.session_id, role="user", text="Hello there. How are you?")
        self.stub.AppendMessage(request, timeout=CALL_TIMEOUT_S)
        return info.session_id

    def _picture(self, session_id: str, meta_skip: frozenset[bytes] = frozenset()) -> dict[bytes, Any]:
        return dump_session(self.redis, session_id, meta_skip=meta_skip)

    def run(self, call: Unary | Stream | Raw) -> Verdict:
        try:
            verdict = self._run(call)
        except Crash as crash:
            self.tally.add(Verdict.CRASH, str(crash))
            raise
        self.tally.add(verdict)
        return verdict

    def _run(self, call: Unary | Stream | Raw) -> Verdict:
        scratch = self._scratch()
        size = self.redis.dbsize()
        before = self._picture(scratch)
        events_before = self._last_event(scratch)
        if isinstance(call, Unary):
            verdict = self._unary(call, scratch)
        elif isinstance(call, Stream):
            verdict = self._stream(call, scratch)
        else:
            verdict = self._raw(call)
        check_health(self.channel, repr(call))
        if self.target.dead():
            raise Crash(f"after {call!r}, services died: {self.target.dead()}")
        if verdict is Verdict.REFUSED and not isinstance(call, Stream):
            changed = differences(before, self._picture(scratch))
            if changed:
                raise Crash(f"{call!r} was refused and changed the session: {changed}")
            if self.redis.dbsize() != size:
                raise Crash(f"{call!r} was refused and changed the number of keys ({size} -> {self.redis.dbsize()})")
        self._check_events(scratch, events_before, call)
        if verdict is Verdict.ACCEPTED:
            self._check_usable(scratch, call)
        return verdict

    def _unary(self, call: Unary, scratch: str) -> Verdict:
        request = _filled(call.request, scratch)
        try:
            getattr(self.stub, call.method)(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as error:
            return judge(error, repr(call))
        return Verdict.ACCEPTED

    def _raw(self, call: Raw) -> Verdict:
        try:
            if call.method == "Generate":
                raw_stream(self.channel, SERVICE + call.method, list(call.payloads), response_streaming=True)
            else:
                raw_unary(self.channel, SERVICE + call.method, call.payloads[0])
        except grpc.RpcError as error:
            return judge(error, f"raw bytes {call.payloads!r} to {call.method}")
        return Verdict.ACCEPTED

    def _stream(self, call: Stream, scratch: str) -> Verdict:
        """One Generate stream, message by message: each refusal is judged against the state it found."""
        if call.settings is not None:
            try:
                update = pb.UpdateSettingsRequest(session_id=scratch, settings=call.settings)
                self.stub.UpdateSettings(update, timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as error:
                judge(error, f"the settings before {call!r}")
        requests: queue.Queue[pb.GenerateRequest | None] = queue.Queue()
        responses = self.stub.Generate(iter(requests.get, None), timeout=CALL_TIMEOUT_S * 4)
        ctx = Context()
        try:
            for message in call.messages:
                request = self._message(message, scratch, ctx)
                before = self._picture(scratch, STREAM_END_FIELDS)
                requests.put(request)
                try:
                    reply = next(responses)
                except StopIteration:
                    raise Crash(f"{call!r}: the stream ended without an answer to {_short(request)}") from None
                except grpc.RpcError as error:
                    verdict = judge(error, f"{call!r} at {_short(request)}")
                    changed = differences(before, self._picture(scratch, STREAM_END_FIELDS))
                    if changed:
                        raise Crash(f"{call!r}: the refused {_short(request)} changed the session: {changed}") from None
                    return verdict
                self._follow(reply, ctx)
                if reply.WhichOneof("kind") == "closed":
                    break
            return Verdict.ACCEPTED
        finally:
            requests.put(None)
            responses.cancel()

    def _message(self, message: Any, scratch: str, ctx: Context) -> pb.GenerateRequest:
        if isinstance(message, FrameSpec):
            return pb.GenerateRequest(frame=_frame(message, ctx))
        if isinstance(message, ProbeSpec):
            n = max(0, ctx.active + message.active_delta)
            return pb.GenerateRequest(
                recall=pb.RecallProbe(
                    cold_positions=message.cold_positions,
                    cold_scores=message.cold_scores,
                    active_scores=[message.active_value] * n,
                )
            )
        request = pb.GenerateRequest()
        request.CopyFrom(message)
        if request.HasField("open") and request.open.session_id == SCRATCH:
            request.open.session_id = scratch
        return request

    @staticmethod
    def _follow(reply: pb.GenerateResponse, ctx: Context) -> None:
        kind = reply.WhichOneof("kind")
        if kind == "opened":
            ctx.opened = True
            ctx.active = len(reply.opened.context.positions)
            ctx.step = getattr(reply.opened, "resumed_step", 0)
        elif kind == "directive":
            d = reply.directive
            ctx.active = len(d.context.positions) if d.reprefill else ctx.active + 1 - len(d.evict_positions)
            ctx.step += 1
        elif kind == "recalled":
            ctx.active += len(reply.recalled.positions) - len(reply.recalled.evict_positions)

    # ---- after the call ---------------------------------------------------------------------------------------------

    def _last_event(self, session_id: str) -> int:
        raw = self.redis.get(keys.events_counter(session_id))
        return int(raw) if raw else 0  # type: ignore[arg-type]

    def _check_events(self, session_id: str, after: int, call: Any) -> None:
        """Every event appended is one a browser can read: strict JSON, no NaN or Infinity."""
        entries = self.redis.xrange(keys.events_stream(session_id), f"({after}-0", "+")
        for _entry_id, fields in entries:  # type: ignore[union-attr]
            data = fields.get(b"data", b"{}")
            try:
                strict_json(data)
            except ValueError as error:
                kind = fields.get(b"type", b"?").decode()
                raise Crash(f"{call!r} appended a {kind} event that is not JSON ({error}): {data[:300]!r}") from None

    def _check_usable(self, session_id: str, call: Any) -> None:
        """After an accepted call the session still takes a message (or says why not) and exports."""
        try:
            self.stub.Export(pb.SessionRef(session_id=session_id), timeout=CALL_TIMEOUT_S)
            request = pb.AppendMessageRequest(session_id=session_id, role="user", text="And now?")
            self.stub.AppendMessage(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as error:
            judge(error, f"a message after the accepted {call!r}")


def _filled(request: Any, scratch: str) -> Any:
    """The request with the scratch session's id where the strategy left its stand-in."""
    copy = type(request)()
    copy.CopyFrom(request)
    if getattr(copy, "session_id", None) == SCRATCH:
        copy.session_id = scratch
    return copy


def _frame(spec: FrameSpec, ctx: Context) -> pb.Frame:
    step = ctx.step if spec.step is None else spec.step
    n = max(0, ctx.active + spec.delta)
    if spec.full is not None:
        layers, heads, extra, pattern = spec.full
        count = layers * heads * ctx.active
        size = max(0, count * 2 + extra) if count * 2 <= 4 * 1024 * 1024 else 2 * 1024
        data = (pattern * (size // 2 + 1))[:size]
        return pb.Frame(step=step, token_id=spec.token_id, full_attention=data, layers=layers, heads=heads)
    if spec.fill == "uniform":
        values = [1.0 / max(n, 1)] * n
    elif spec.fill == "zeros":
        values = [0.0] * n
    else:
        values = [spec.values[i % len(spec.values)] for i in range(n)]
    if spec.poison is not None and values:
        index, value = spec.poison
        values[index % n] = value
    return pb.Frame(step=step, token_id=spec.token_id, attention=values)


def _short(message: Any) -> str:
    text = repr(message) if not hasattr(message, "ListFields") else str(message).replace("\n", " ")
    return text if len(text) <= 240 else f"{text[:240]}...({len(text)} chars)"
