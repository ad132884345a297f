"""bench.engines's short run: both engines, each in its own environment, in one table with ratios and a results file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench.support import run_bench


@pytest.mark.slow
def test_quick_run_compares_both_engines(tmp_path: Path) -> None:
    out = tmp_path / "engines.json"
    stdout = run_bench("engines", "--quick", "--out", str(out), timeout=400)
    assert "capture cost" in stdout and "vLLM re-prefill" in stdout and "load average" in stdout
    results = json.loads(out.read_text())
    assert [row["requests"] for row in results["batch"]] == [1, 4]
    for row in results["batch"]:
        assert min(row["native_capture_tps"], row["vllm_tps"], row["vllm_capture_tps"]) > 0
        assert row["capture_cost"] == pytest.approx(row["vllm_tps"] / row["vllm_capture_tps"])
    prunes = {row["where"]: row for row in results["prune"]}
    assert set(prunes) == {"scattered", "late"}
    # Pruning only the second half, vLLM's prefix cache gives back the whole blocks before the first pruned token.
    assert prunes["late"]["vllm_reused_tokens"] >= 128 - 32 and prunes["scattered"]["vllm_reused_tokens"] < 32
