"""bench.faults's short run: a round without a fault and a killed snapshot service, the table and the results file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench.support import run_bench


@pytest.mark.slow
@pytest.mark.e2e
def test_quick_run_tabulates_outcomes_and_recovery(tmp_path: Path) -> None:
    out = tmp_path / "faults.json"
    only = ["--only", "no fault", "SIGKILL snapshot"]
    # Replies of 20 tokens, as in tests/e2e/test_faults.py: still cut in the middle (the fault strikes after 2), and
    # the run is ~8 s shorter than with the bench's 48.
    short = ["--max-new-tokens", "20"]
    stdout = run_bench("faults", "--quick", "--repeats", "1", *only, *short, "--out", str(out), timeout=400)
    assert "completed once" in stdout and "recovery median s" in stdout
    (table,) = json.loads(out.read_text())["tables"]
    rows = {row[0]: dict(zip(table["columns"], row, strict=True)) for row in table["rows"]}
    assert set(rows) == {"no fault", "SIGKILL snapshot"}
    for row in rows.values():
        assert row["replies"] == 3 and row["completed once"] + row["clear error"] == 3, row
        assert row["then completed"] == "3/3"
