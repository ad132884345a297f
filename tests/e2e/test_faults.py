"""Faults mid-reply against the real, supervised stack: three sessions chatting while one process is killed (SIGKILL)
or stalled (SIGSTOP, then SIGCONT).

After each fault every reply that was in flight completed exactly once or ended with a clear error, nothing the
client was shown is missing from the session's export, and the next message of every conversation completes (the
service is back and the sessions are usable). tests/support/faults.py says how each conversation is classified;
`python -m bench.faults` runs the same rounds, more of them, with 30 s stalls.

The module starts a supervised stack of its own (these tests kill its processes), with workers that reclaim a dead
consumer's job after 6 s instead of 15 s, to keep the run short. Each round's frames and exports are written to
test-artifacts/faults/ and the services' logs to test-artifacts/fault-logs/.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from devstack.stack import Stack
from tests.conftest import ARTIFACTS
from tests.support.faults import faults, run_fault, supervised_stack

pytestmark = pytest.mark.e2e

STALL_S = 8.0
SESSIONS = 3
SETTINGS = {"max_new_tokens": 20}  # long enough to be cut in the middle, short enough for a quick run
THEN = {"max_new_tokens": 6}  # the next message: a few tokens show that the session is served again
FAULTS = faults(STALL_S)
ANSWERED = ("completed once", "clear error")


@pytest.fixture(scope="module")
def faulty_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("faults")
    try:
        with supervised_stack(workdir, env={"HALOWEAVE_CLAIM_IDLE_MS": "6000"}) as stack:
            yield stack
    finally:
        logs = ARTIFACTS / "fault-logs"
        logs.mkdir(parents=True, exist_ok=True)
        for log in (workdir / "logs").glob("*.log"):
            shutil.copyfile(log, logs / log.name)


@pytest.mark.parametrize(
    "name",
    [
        "SIGKILL tracker",
        "SIGKILL gateway",
        "SIGKILL snapshot",
        "SIGKILL redis",
        f"SIGSTOP tracker {STALL_S:g} s",
        f"SIGSTOP redis {STALL_S:g} s",
    ],
)
def test_every_reply_in_flight_ends_once_and_the_next_one_completes(faulty_stack: Stack, name: str) -> None:
    result = run_fault(faulty_stack, FAULTS[name], SESSIONS, SETTINGS, reply_timeout=40, then=THEN)
    result.dump(ARTIFACTS / "faults" / f"{name.replace(' ', '-')}.json")
    assert result.back_s is not None, f"{name}: the target did not come back\n{result.describe()}"
    assert all(o.kind in ANSWERED for o in result.outcomes), result.describe()
    assert all(o.kind == "completed once" for o in result.after), result.describe()
    assert not faulty_stack.dead(), f"services down after the round: {faulty_stack.dead()}"
