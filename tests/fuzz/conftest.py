"""Fixtures for the fuzz tests: one real system (tracker, snapshot service, gateway) on the test Redis, for the session.

The fuzzers themselves live in bench.fuzz, where `python -m bench.fuzz` runs them to count what they find; here each
runs under hypothesis with the first crash failing the test, shrunk to a minimal input.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.fuzz.target import Target, running
from bench.fuzz.websocket import Victim, new_victim
from devstack.procs import Proc

# A database of its own: other test modules flush db 0 between their tests, and the gateway tests use db 5.
FUZZ_DB = 7


@pytest.fixture(scope="session")
def fuzz_target(redis_server: tuple[Proc, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    url = redis_server[1].rsplit("/", 1)[0] + f"/{FUZZ_DB}"
    with running(tmp_path_factory.mktemp("fuzz"), redis_url=url) as target:
        yield target
        assert not target.dead(), f"services died during the fuzz tests: {target.dead()}"


@pytest.fixture
def victim(fuzz_target: Target) -> Victim:
    """A fresh session (id and token) for one test to watch."""
    return new_victim(fuzz_target)


def assert_no_unhandled_errors(target: Target, before: dict[str, int]) -> None:
    """No service logged an unhandled error (a traceback) since `before`."""
    after = target.unhandled_errors()
    grown = {name: after[name] - before.get(name, 0) for name in after if after[name] > before.get(name, 0)}
    tails = "\n".join(target.procs[name].tail(60) for name in grown)
    assert not grown, f"unhandled errors logged: {grown}\n{tails}"
