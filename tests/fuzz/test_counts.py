"""`bench.fuzz.run_fuzzers`, which the fault benchmark imports: every fuzzer runs on a system of its own and reports
its counts without raising."""

from __future__ import annotations

from bench.fuzz import FUZZERS, run_fuzzers


def test_run_fuzzers_counts_every_input_of_every_fuzzer() -> None:
    rows = run_fuzzers(5)
    assert [row["fuzzer"] for row in rows] == list(FUZZERS)
    for row in rows:
        assert set(row) == {"fuzzer", "inputs", "crashes", "refusals", "accepted"}
        assert row["inputs"] == row["crashes"] + row["refusals"] + row["accepted"] > 0, row
        assert row["crashes"] == 0, row
