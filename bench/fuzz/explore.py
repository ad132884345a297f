"""Running a fuzzer under hypothesis, from a test (strict: the first crash fails, shrunk to a minimal input) or from
the benchmark (every input is tried and counted)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.database import ExampleDatabase

from bench.fuzz.tally import Crash

T = TypeVar("T")


def explore(
    strategy: st.SearchStrategy[T],
    check: Callable[[T], Any],
    examples: int,
    strict: bool,
    database: ExampleDatabase | None = None,
) -> None:
    """Feeds `examples` generated inputs to `check`. Strict: a Crash fails (after shrinking); else it is only counted
    (the fuzzer's tally holds it) and the search goes on."""

    @settings(
        max_examples=examples,
        deadline=None,
        database=database,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink] if strict else [Phase.generate],
        print_blob=strict,
    )
    @given(strategy)
    def run(value: T) -> None:
        try:
            check(value)
        except Crash:
            if strict:
                raise

    run()


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each `weight` times as likely (st.one_of flattens its branches and ignores repeats)."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(table).flatmap(lambda strategy: strategy)
