"""bench.quality: its conversations, its runner against a plain forward, its statistics, and the `--quick` smoke run."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import torch
from redis.asyncio import Redis
from transformers import AutoModelForCausalLM

from bench.quality import stats
from bench.quality.runner import Policy, Runner
from bench.quality.tasks import TASKS, generate
from services.common import model_store
from services.inference.engine import Engine, EngineConfig
from services.tracker.engine import Engine as Tracker
from services.tracker.settings import PRUNE_POLICIES
from services.tracker.store import Store
from services.tracker.template import ChatTemplate
from tests.bench.support import run_bench


@pytest.mark.parametrize("task", sorted(TASKS))
def test_conversations_are_reproducible_and_state_their_facts_only_in_user_turns(task: str) -> None:
    chat = generate(task, 3, seed=7)
    assert chat == generate(task, 3, seed=7) and chat != generate(task, 4, seed=7)
    users = [text for role, text in chat.turns if role == "user"]
    replies = [text for role, text in chat.turns if role == "assistant"]
    assert [role for role, _ in chat.turns] == ["user", "assistant"] * len(users)
    for fact in (*chat.facts, *chat.removed):
        assert sum(fact in text for text in users) == 1, fact  # stated once, in one user turn
        assert not any(fact in text for text in replies)
    assert set(chat.removed) <= set(chat.facts)
    assert any(chat.key in fact for fact in chat.facts) or task == "variable_tracking"
    assert chat.key not in chat.question and chat.key not in " ".join(replies)
    assert chat.facts[0] not in users[-1] or task == "fact_update"  # distracting turns follow the first fact


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(EngineConfig(threads=2))


@pytest.fixture
async def runner(redis_url: str, engine: Engine) -> AsyncIterator[Runner]:
    client = Redis.from_url(redis_url)
    tracker = Tracker(Store(client), ChatTemplate(engine.tokenizer), engine.model_name, "test")
    yield Runner(engine, tracker)
    await client.aclose()


async def test_the_runner_measures_what_a_plain_forward_measures(runner: Runner, engine: Engine) -> None:
    """With no pruning, the NLL the runner reports (every reply stepped through capture, frames and the tracker)
    equals the NLL of one plain transformers forward of the whole conversation as the chat template renders it; the
    pruned variants
    fit their budgets, and the fact removed costs likelihood."""
    chat = generate("passkey_ruler", 0, seed=0)
    records = await runner.evaluate(chat, [Policy.parse("brightness"), Policy.parse("recency")], [0.5])
    by_policy = {r["policy"]: r for r in records}
    assert set(by_policy) == {"none", "brightness", "recency", "fact_removed"}
    messages = [{"role": role, "content": text} for role, text in chat.turns]
    messages.append({"role": "user", "content": chat.question})
    prompt = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert len(engine.tokenizer(prompt, add_special_tokens=False)["input_ids"]) == by_policy["none"]["length"]
    lead = engine.tokenizer(chat.lead, add_special_tokens=False)["input_ids"]
    key = engine.tokenizer(" " + chat.key, add_special_tokens=False)["input_ids"]
    ids = engine.tokenizer(prompt, add_special_tokens=False)["input_ids"] + lead + key
    plain = AutoModelForCausalLM.from_pretrained(str(model_store.model_path()), attn_implementation="sdpa")
    with torch.inference_mode():
        logits = plain(input_ids=torch.tensor([ids])).logits[0].float()
    rows = torch.log_softmax(logits[len(ids) - len(key) - 1 : -1], dim=-1)
    reference = -float(rows[torch.arange(len(key)), torch.tensor(key)].mean())
    assert by_policy["none"]["nll"] == pytest.approx(reference, abs=2e-3)
    assert by_policy["none"]["kept"] and not by_policy["fact_removed"]["kept"]
    assert by_policy["fact_removed"]["nll"] > by_policy["none"]["nll"] + 1.0
    for policy in ("brightness", "recency"):
        assert by_policy[policy]["active_tokens"] <= by_policy[policy]["budget_tokens"]
    removed = by_policy["none"]["active_tokens"] - by_policy["fact_removed"]["active_tokens"]
    assert removed == len(engine.tokenizer(chat.facts[0], add_special_tokens=False)["input_ids"])


async def test_generated_assistant_turns_run_through_the_same_loop(runner: Runner) -> None:
    """`--generate`: each variant samples its own replies (here 4 tokens each), so the variants' conversations
    differ, and every one is still pruned to its budget and measured."""
    runner.generate, runner.reply_tokens = True, 4
    chat = generate("fact_update", 1, seed=0)
    records = await runner.evaluate(chat, [Policy.parse("tova")], [0.5])
    by_policy = {r["policy"]: r for r in records}
    assert set(by_policy) == {"none", "tova", "fact_removed"}
    assert by_policy["none"]["kept"] and by_policy["tova"]["active_tokens"] <= by_policy["tova"]["budget_tokens"]
    assert all(r["nll"] > 0 for r in records)


async def test_recall_variants_probe_and_bring_the_needle_back(runner: Runner) -> None:
    """Recency at half the conversation loses the pass key; with recall on, each prompt probes the cold tier and the
    question's probe brings the key's sentence back (this conversation is one where it does), within the budget."""
    chat = generate("passkey_ruler", 0, seed=0)
    records = await runner.evaluate(chat, [Policy.parse("recency"), Policy.parse("recency:recall=1")], [0.5])
    by_policy = {r["policy"]: r for r in records}
    off, on = by_policy["recency"], by_policy["recency:recall=1"]
    assert not off["kept"] and off["probes"] == 0 and off["cold_bytes"] == 0 and not off["recall"]
    assert on["recall"] and on["probes"] == 4  # three replies and the question
    assert on["kept"] and on["recalled_tokens"] > 0 and on["cold_bytes"] > 0
    assert on["active_tokens"] <= on["budget_tokens"]
    assert on["nll"] < off["nll"]
    assert Policy.parse("h2o:recall=1").settings == {"prune_policy": "h2o", "recall": True}


def test_recall_variants_are_paired_with_the_same_policy_off() -> None:
    assert stats.recall_base("h2o:recall=1") == "h2o"
    assert stats.recall_base("brightness:aggregation=max,recall=1") == "brightness:aggregation=max"
    assert stats.recall_base("brightness:aggregation=max") is None and stats.recall_base("tova") is None
    records = [
        {"task": "multi_fact", "index": i, "policy": policy, "budget": budget, "nll": value, "kept": False,
         "correct": False, "active_tokens": 100, "recalled_tokens": 10, "probes": 2, "recall_seconds": 0.1,
         "cold_bytes": 1000}
        for i in range(4)
        for policy, budget, value in (
            ("none", 0.0, 1.0), ("fact_removed", 0.0, 3.0), ("h2o", 0.5, 2.5), ("h2o:recall=1", 0.5, 1.5 + 0.1 * i)
        )
    ]  # fmt: skip
    rows = {r["policy"]: r for r in stats.summarise(records)}
    versus = rows["h2o:recall=1"]["vs_recall_off"]
    assert versus["b_better"] == 4 and versus["mean"] == pytest.approx(-0.85)
    assert rows["h2o:recall=1"]["recall_cost"] == {"recalled_tokens": 10.0, "seconds_per_probe": 0.05,
                                                   "cold_bytes": 1000.0}  # fmt: skip
    assert "vs_recall_off" not in rows["h2o"]


def test_gap_closed_and_paired_comparisons() -> None:
    rng = np.random.default_rng(0)
    removed, full = np.full(50, 3.0), np.full(50, 1.0)
    assert stats.gap_closed(removed, full, full, rng)["mean"] == 1.0
    assert stats.gap_closed(removed, removed, full, rng)["mean"] == 0.0
    half = stats.gap_closed(removed, np.full(50, 2.0) + rng.normal(0, 0.1, 50), full, rng)
    assert half["ci"][0] < 0.5 < half["ci"][1] and half["ci"][1] - half["ci"][0] < 0.2
    worse = stats.paired(np.zeros(20), np.ones(20), rng)
    assert (worse["mean"], worse["a_better"], worse["b_better"]) == (1.0, 20, 0)


def test_summarise_pools_an_extended_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two files of one seed (a run and its `--start` extension) are summarised as one set of conversations."""
    from bench.quality.__main__ import _json, main

    def run(first: int, nll: float) -> Path:
        records = [
            {"task": "multi_fact", "index": i, "policy": policy, "budget": budget, "nll": value, "kept": kept,
             "correct": False, "active_tokens": 100}
            for i in range(first, first + 3)
            for policy, budget, value, kept in (
                ("none", 0.0, 1.0, True), ("fact_removed", 0.0, 3.0, False), ("brightness", 0.5, nll, False)
            )
        ]  # fmt: skip
        path = tmp_path / f"run-{first}.json"
        path.write_text(_json({"config": {"seed": 0}, "records": records}))
        return path

    assert main(["--summarise", str(run(0, 2.0)), str(run(3, 1.0)), "--figure", str(tmp_path / "f.png")]) == 0
    brightness = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("multi_fact         brightness")
    ]
    assert brightness and " 6 " in brightness[0] and "0.75" in brightness[0]  # n = 6; gap closed (1.5) / 2


@pytest.mark.e2e
def test_quick_run_writes_results_and_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m bench.quality --quick` (what `make test` runs as a smoke test): Ray actor, every task and policy."""
    out, figure = tmp_path / "quality.json", tmp_path / "quality.png"
    stdout = run_bench("quality", "--quick", "--out", str(out), "--figure", str(figure), timeout=500)
    assert "conversations/min" in stdout and "gap closed" in stdout
    results = json.loads(out.read_text())
    rows = {(r["task"], r["policy"]) for r in results["summary"]}
    assert rows == {(t, p) for t in TASKS for p in (*PRUNE_POLICIES, "none", "fact_removed")}
    for r in results["summary"]:
        if r["policy"] == "none":
            assert r["kept"]["mean"] == 1.0
        if r["policy"] == "fact_removed":
            assert r["kept"]["mean"] == 0.0

    def mean_nll(policy: str) -> float:
        return float(np.mean([r["nll"]["mean"] for r in results["summary"] if r["policy"] == policy]))

    assert mean_nll("none") < mean_nll("fact_removed")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The tables of docs/quality.md come from the same file, with no run: `main` in this process, as
    # test_summarise_pools_an_extended_run calls it (a second interpreter only added its ~4 s start-up).
    from bench.quality.__main__ import main

    again = tmp_path / "again.png"
    capsys.readouterr()
    assert main(["--summarise", str(out), "--figure", str(again), "--markdown"]) == 0
    shown = capsys.readouterr().out
    assert shown.count("| passkey_ruler | 50% |") == 3 and again.exists()  # gap closed, kept / right, paired
