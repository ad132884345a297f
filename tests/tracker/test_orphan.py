"""A Generate stream that ends while Redis is away still leaves its reply marked orphaned, once Redis is back: else
the reply stayed open for good and the session refused every message (`busy`)."""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.tracker import servicer as servicer_module
from services.tracker.servicer import TrackerServicer


class FlakyEngine:
    """Fails `orphan` with the given errors, then succeeds."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.marked: list[tuple[str, str, int | None]] = []

    async def orphan(self, session_id: str, job_id: str, attempt: int | None = None) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.marked.append((session_id, job_id, attempt))


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servicer_module, "ORPHAN_RETRY_S", (0.01, 0.02, 1.0))


async def test_the_mark_is_retried_until_redis_answers() -> None:
    engine = FlakyEngine(RedisConnectionError("refused"), RedisTimeoutError("stalled"), RedisConnectionError("x"))
    await TrackerServicer(engine)._orphan("s", "j", 2)  # type: ignore[arg-type]
    assert engine.marked == [("s", "j", 2)]


async def test_it_gives_up_after_its_patience(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servicer_module, "ORPHAN_RETRY_S", (0.01, 0.02, 0.1))
    engine: Any = FlakyEngine(*(RedisConnectionError("down") for _ in range(100)))
    await TrackerServicer(engine)._orphan("s", "j", None)
    assert engine.marked == [] and engine.errors  # it stopped trying


async def test_other_errors_are_not_retried() -> None:
    engine: Any = FlakyEngine(ValueError("a bug"))
    await TrackerServicer(engine)._orphan("s", "j", None)
    assert engine.marked == []
