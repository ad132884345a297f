"""The tracker's and the snapshot service's gRPC APIs under generated messages and raw bytes (bench.fuzz.tracker and
bench.fuzz.snapshot say what is sent and what is checked), and the calls that once broke them, each as a plain test."""

from __future__ import annotations

import grpc
import pytest
from haloweave.snapshot.v1 import snapshot_pb2
from haloweave.tracker.v1 import tracker_pb2 as pb

from bench.fuzz import snapshot as snapshot_fuzz
from bench.fuzz import tracker as tracker_fuzz
from bench.fuzz.explore import explore
from bench.fuzz.grpc_common import open_channel, raw_stream, raw_unary
from bench.fuzz.tally import Verdict
from bench.fuzz.target import Target
from tests.fuzz.conftest import assert_no_unhandled_errors

CALLS = 500


def test_the_tracker_refuses_hostile_calls_clearly_and_they_change_nothing(fuzz_target: Target) -> None:
    before = fuzz_target.unhandled_errors()
    fuzzer = tracker_fuzz.TrackerFuzzer(fuzz_target)
    try:
        explore(tracker_fuzz.calls(), fuzzer.run, CALLS, strict=True)
    finally:
        fuzzer.close()
    assert fuzzer.tally.crashes == 0 and fuzzer.tally.accepted > 0, fuzzer.tally.row()
    assert_no_unhandled_errors(fuzz_target, before)


def test_the_snapshot_service_refuses_hostile_calls_clearly_and_they_change_nothing(fuzz_target: Target) -> None:
    before = fuzz_target.unhandled_errors()
    fuzzer = snapshot_fuzz.SnapshotFuzzer(fuzz_target)
    try:
        explore(snapshot_fuzz.calls(), fuzzer.run, CALLS, strict=True)
    finally:
        fuzzer.close()
    assert fuzzer.tally.crashes == 0 and fuzzer.tally.accepted > 0, fuzzer.tally.row()
    assert_no_unhandled_errors(fuzz_target, before)


UNDECODABLE = [b"\xff", b"\x0a\x02\xff\xfe", b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", b"\x08"]


@pytest.mark.parametrize("payload", UNDECODABLE)
def test_bytes_that_are_no_message_are_invalid_argument(fuzz_target: Target, payload: bytes) -> None:
    # Once UNKNOWN (unary: grpc's own decoding failed) and INTERNAL with a traceback (streams).
    with open_channel(fuzz_target.tracker_addr) as tracker, open_channel(fuzz_target.snapshot_addr) as snapshots:
        calls = [
            lambda: raw_unary(tracker, "/haloweave.tracker.v1.Tracker/GetSession", payload),
            lambda: raw_stream(tracker, "/haloweave.tracker.v1.Tracker/Generate", [payload], response_streaming=True),
            lambda: raw_unary(snapshots, "/haloweave.snapshot.v1.Snapshot/Delete", payload),
            lambda: raw_stream(snapshots, "/haloweave.snapshot.v1.Snapshot/Save", [payload], response_streaming=False),
            lambda: list(snapshots.unary_stream("/haloweave.snapshot.v1.Snapshot/Load")(payload, timeout=15)),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
            assert "not a valid message" in (refused.value.details() or "")
        # and the servers go on serving
        assert tracker_fuzz.tracker_pb2_grpc.TrackerStub(tracker).CreateSession(pb.CreateSessionRequest()).session_id


def _restore(tokens: list[pb.TokenEntry], next_position: int = 0) -> tracker_fuzz.Unary:
    state = pb.ExportResponse(tokens=tokens, next_position=next_position)
    return tracker_fuzz.Unary("RestoreState", pb.RestoreStateRequest(session_id=tracker_fuzz.SCRATCH, state=state))


def _entry(position: int, turn: int = 0, sentence: int = 0) -> pb.TokenEntry:
    return pb.TokenEntry(token="a.", token_id=28, position=position, turn_id=turn, sentence_id=sentence, role="user")


FRAME = tracker_fuzz.FrameSpec(None, 28, 0, "uniform", (0.0,), None, None)
OPEN = pb.GenerateRequest(open=pb.Open(session_id=tracker_fuzz.SCRATCH, job_id="job-1"))


@pytest.mark.parametrize(
    ("call", "verdict"),
    [
        # Accepted, and then the session refused every message (INTERNAL): its next position overflowed int64, or
        # its next turn id int32.
        (_restore([_entry(0), _entry(2**63 - 1)]), Verdict.REFUSED),
        (_restore([_entry(0)], next_position=2**63 - 1), Verdict.REFUSED),
        (_restore([_entry(0, turn=2**31 - 1)]), Verdict.REFUSED),
        # Accepted, and the next frame failed: the weights table grew to the widest distance, 2^62 entries.
        (_restore([_entry(0), _entry(2**40), _entry(2**61, turn=1)]), Verdict.ACCEPTED),
        # Accepted, and every score overflowed to inf (then NaN): boost and distance scale without bounds.
        (tracker_fuzz.Stream((OPEN, FRAME, FRAME), pb.Settings(json='{"boost": 1e308}')), Verdict.ACCEPTED),
        (
            tracker_fuzz.Stream(
                (OPEN, FRAME), pb.Settings(json='{"distance_mode": "linear", "distance_scale": 5e-324}')
            ),
            Verdict.ACCEPTED,
        ),
        # Accepted, and its `done` event held NaN and Infinity, which no browser parses.
        (
            tracker_fuzz.Stream(
                (
                    OPEN,
                    FRAME,
                    pb.GenerateRequest(finish=pb.Finish(time_to_first_token_s=float("nan"), tokens_per_s=float("inf"))),
                )
            ),
            Verdict.ACCEPTED,
        ),
    ],
)
def test_tracker_calls_that_once_broke_a_session(fuzz_target: Target, call: object, verdict: Verdict) -> None:
    fuzzer = tracker_fuzz.TrackerFuzzer(fuzz_target)
    try:
        assert fuzzer.run(call) is verdict  # type: ignore[arg-type]
    finally:
        fuzzer.close()
    if isinstance(call, tracker_fuzz.Unary) and verdict is Verdict.ACCEPTED:
        # The widely spread dictionary takes a reply, frame after frame.
        stream = tracker_fuzz.Stream((OPEN, FRAME, FRAME))
        fuzzer = tracker_fuzz.TrackerFuzzer(fuzz_target)
        try:
            assert fuzzer._stream(stream, _restored_session(fuzz_target, call)) is Verdict.ACCEPTED
        finally:
            fuzzer.close()


def _restored_session(target: Target, call: tracker_fuzz.Unary) -> str:
    with open_channel(target.tracker_addr) as channel:
        stub = tracker_fuzz.tracker_pb2_grpc.TrackerStub(channel)
        sid = stub.CreateSession(pb.CreateSessionRequest()).session_id
        request = pb.RestoreStateRequest()
        request.CopyFrom(call.request)
        request.session_id = sid
        stub.RestoreState(request)
        return str(sid)


def test_a_save_under_a_second_name_for_a_file_is_refused(fuzz_target: Target) -> None:
    # `layer.0.key\n` was accepted as a second tensor writing past_key_values/0_key.npy: the save succeeded and could
    # never be loaded.
    arrays = snapshot_fuzz.cache(1, 1, 2, 2, None, 0)
    chunks = [c for name, a in arrays.items() for c in snapshot_fuzz.tensor_chunks(name, a)]
    extra = snapshot_pb2.TensorChunk.FromString(chunks[3].SerializeToString())
    extra.name = "layer.0.key\n"
    save = snapshot_fuzz.Save(snapshot_fuzz.good_header(1), (*chunks, extra))
    fuzzer = snapshot_fuzz.SnapshotFuzzer(fuzz_target)
    try:
        assert fuzzer.run(save) is Verdict.REFUSED
    finally:
        fuzzer.close()
