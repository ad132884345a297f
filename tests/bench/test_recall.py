"""bench.recall's --quick run: every operation it times runs, and the table and results say what they measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench.support import run_bench


@pytest.mark.slow
def test_quick_run_measures_every_operation(tmp_path: Path) -> None:
    out = tmp_path / "recall.json"
    stdout = run_bench("recall", "--quick", "--out", str(out), timeout=300)
    assert "to cold ÷ in place" in stdout and "spread" in stdout
    (row,) = json.loads(out.read_text())["rows"]
    for name in ("decode step", "evict in place", "evict to cold", "probe: score the cold tier", "per_message_s"):
        assert row[name] > 0
    # 128 cold tokens of SmolLM2 in fp32: 30 layers x 2 x 3 KV heads x 64 dims x 4 bytes each.
    assert row["cold bytes"] == 128 * 30 * 2 * 3 * 64 * 4
