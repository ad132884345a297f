"""bench.recall's --quick run: every operation it times runs, and the table and results say what they measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_run_measures_every_operation(tmp_path: Path) -> None:
    out = tmp_path / "recall.json"
    command = [sys.executable, "-m", "bench.recall", "--quick", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "to cold ÷ in place" in done.stdout and "spread" in done.stdout
    (row,) = json.loads(out.read_text())["rows"]
    for name in ("decode step", "evict in place", "evict to cold", "probe: score the cold tier", "per_message_s"):
        assert row[name] > 0
    # 128 cold tokens of SmolLM2 in fp32: 30 layers x 2 x 3 KV heads x 64 dims x 4 bytes each.
    assert row["cold bytes"] == 128 * 30 * 2 * 3 * 64 * 4
