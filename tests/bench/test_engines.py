"""bench.engines's short run: both engines, each in its own environment, in one table with ratios and a results file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_run_compares_both_engines(tmp_path: Path) -> None:
    out = tmp_path / "engines.json"
    command = [sys.executable, "-m", "bench.engines", "--quick", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "capture cost" in done.stdout and "vLLM re-prefill" in done.stdout and "load average" in done.stdout
    results = json.loads(out.read_text())
    assert [row["requests"] for row in results["batch"]] == [1, 4]
    for row in results["batch"]:
        assert min(row["native_capture_tps"], row["vllm_tps"], row["vllm_capture_tps"]) > 0
        assert row["capture_cost"] == pytest.approx(row["vllm_tps"] / row["vllm_capture_tps"])
    prunes = {row["where"]: row for row in results["prune"]}
    assert set(prunes) == {"scattered", "late"}
    # Pruning only the second half, vLLM's prefix cache gives back the whole blocks before the first pruned token.
    assert prunes["late"]["vllm_reused_tokens"] >= 128 - 32 and prunes["scattered"]["vllm_reused_tokens"] < 32
