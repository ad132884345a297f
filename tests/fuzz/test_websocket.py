"""The chat WebSocket under hypothesis-generated scripts of hostile frames (bench.fuzz.websocket says what is sent and
what is checked), and the inputs that once broke the gateway, each as a plain test."""

from __future__ import annotations

import json

import pytest

from bench.fuzz.explore import explore
from bench.fuzz.tally import Verdict
from bench.fuzz.target import Target
from bench.fuzz.websocket import Send, Victim, WebSocketFuzzer, scripts
from tests.fuzz.conftest import assert_no_unhandled_errors

SCRIPTS = 200


def test_hostile_frames_are_refused_clearly_and_change_nothing(fuzz_target: Target, victim: Victim) -> None:
    before = fuzz_target.unhandled_errors()
    fuzzer = WebSocketFuzzer(fuzz_target, victim)
    try:
        explore(scripts(victim), fuzzer.run, SCRIPTS, strict=True)
    finally:
        fuzzer.close()
    tally = fuzzer.tally
    assert tally.crashes == 0, tally.details
    assert tally.refusals > tally.accepted > 0, tally.row()
    assert_no_unhandled_errors(fuzz_target, before)


def _text(frame: object) -> Send:
    return Send(text=json.dumps(frame))


HELLO = _text({"type": "hello"})


@pytest.mark.parametrize(
    "script",
    [
        # Once `internal`: the JSON decoder's RecursionError, lone surrogates that neither Redis nor protobuf encode,
        # and an integer beyond any double in a float setting.
        [Send(text="[" * 5000 + "]" * 5000)],
        [HELLO, Send(text='{"type":"settings","settings":{"boost":' + "[" * 3000 + "]" * 3000 + "}}")],
        [_text({"type": "hello", "session_id": "\ud800", "token": "t"})],
        [HELLO, _text({"type": "user_message", "text": "hi \udfff"})],
        [HELLO, _text({"type": "settings", "settings": {"stop": ["\udc00"]}})],
        [HELLO, Send(text='{"type":"settings","settings":{"decay_rate":1' + "0" * 400 + "}}")],
        # Once accepted, and every score of the session then overflowed to inf (or NaN).
        [HELLO, _text({"type": "settings", "settings": {"boost": 1e308}})],
        [HELLO, _text({"type": "settings", "settings": {"distance_mode": "linear", "distance_scale": 5e-324}})],
    ],
)
def test_inputs_that_once_broke_the_gateway_are_refused(
    fuzz_target: Target, victim: Victim, script: list[Send]
) -> None:
    fuzzer = WebSocketFuzzer(fuzz_target, victim)
    try:
        verdicts = fuzzer.run(script)
    finally:
        fuzzer.close()
    assert verdicts[-1] is Verdict.REFUSED, fuzzer.tally.details


def test_the_documented_orderings(fuzz_target: Target, victim: Victim) -> None:
    resume = {"type": "hello", "session_id": victim.session_id, "token": victim.token}
    cases = [
        ([_text({"type": "user_message", "text": "before hello"})], [Verdict.REFUSED]),  # no_session
        ([HELLO, HELLO], [Verdict.ACCEPTED, Verdict.REFUSED]),  # session_bound
        ([_text({**resume, "token": victim.token[::-1]})], [Verdict.REFUSED]),  # unauthorized
        ([_text({**resume, "session_id": "f" * 32})], [Verdict.REFUSED]),  # unknown_session
        ([_text({**resume, "last_event_id": 10**9})], [Verdict.REFUSED]),  # ahead of the session
        ([_text({**resume, "last_event_id": -1})], [Verdict.REFUSED]),
        ([_text(resume), _text({"type": "cancel"})], [Verdict.ACCEPTED, Verdict.ACCEPTED]),  # a no-op when idle
        ([_text(resume), _text({"type": "settings", "settings": {"top_p": 0}})], [Verdict.ACCEPTED, Verdict.REFUSED]),
        ([Send(data=b'{"type": "hello"}')], [Verdict.REFUSED]),  # a binary frame
        ([Send(data=b"\xff\xfe", utf8=False), HELLO], [Verdict.REFUSED, Verdict.ACCEPTED]),  # 1007, then a new socket
        ([_text({"type": "user_message", "text": "x" * (1 << 20)}), HELLO], [Verdict.REFUSED, Verdict.ACCEPTED]),
        ([HELLO, _text({"type": "user_message", "text": "Hi."})], [Verdict.ACCEPTED, Verdict.ACCEPTED]),  # a job
    ]
    fuzzer = WebSocketFuzzer(fuzz_target, victim)
    try:
        for script, expected in cases:
            assert fuzzer.run(script) == expected, script
    finally:
        fuzzer.close()
