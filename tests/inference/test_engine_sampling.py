"""Sampling parameters, seeded sampling, stop strings, and a whole reply with its finish reasons."""

from __future__ import annotations

import pytest
import torch

from services.common import settings_wire
from services.inference.engine import Engine, EngineConfig, Sampler, SamplingParams, stop_reached

from .engine_support import local_reply, prompt_ids


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_new_tokens", 0),
        ("max_new_tokens", -3),
        ("max_new_tokens", 2.5),
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("seed", "7"),
        ("stop", [""]),
    ],
)
def test_sampling_params_refuse_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})  # type: ignore[arg-type]


def test_sampling_params_defaults_are_valid() -> None:
    params = SamplingParams()
    assert params.max_new_tokens == 128 and params.temperature == 0.0 and params.top_p == 1.0 and params.stop == []


def random_logits(seed: int) -> torch.Tensor:
    return torch.randn(1000, generator=torch.Generator().manual_seed(seed))


def test_greedy_takes_the_argmax() -> None:
    logits = random_logits(1)
    assert Sampler(SamplingParams(temperature=0.0, seed=5)).sample(logits) == int(torch.argmax(logits))


def test_seeded_sampling_is_reproducible_and_seed_dependent() -> None:
    logits = [random_logits(i) for i in range(40)]

    def run(seed: int) -> list[int]:
        sampler = Sampler(SamplingParams(temperature=1.0, seed=seed))
        return [sampler.sample(x, step) for step, x in enumerate(logits)]

    assert run(11) == run(11)
    assert run(11) != run(12)
    # At temperature 1 over 1000 near-flat choices, sampling is not secretly greedy.
    assert run(11) != [int(torch.argmax(x)) for x in logits]


def test_top_p_keeps_only_the_nucleus() -> None:
    logits = torch.full((50,), -10.0)
    logits[7], logits[3] = 5.0, 4.0  # ~73% and ~27% of the mass; everything else is negligible
    narrow = Sampler(SamplingParams(temperature=1.0, top_p=0.5, seed=0))
    assert {narrow.sample(logits, step) for step in range(50)} == {7}
    wide = Sampler(SamplingParams(temperature=1.0, top_p=0.99, seed=0))
    assert {wide.sample(logits, step) for step in range(200)} == {3, 7}


def test_a_step_draws_the_same_token_whatever_came_before() -> None:
    """A reply resumed at step n on a fresh sampler (another worker) samples what the first attempt would have."""
    logits = [random_logits(i) for i in range(12)]
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=7)
    whole = Sampler(params)
    first = [whole.sample(x, step) for step, x in enumerate(logits)]
    resumed = Sampler(params)
    assert [resumed.sample(x, step) for step, x in enumerate(logits) if step >= 5] == first[5:]


def test_stop_reached_finds_the_earliest_stop_string() -> None:
    assert stop_reached("Hello world", ["xyz"]) is None
    assert stop_reached("Hello world", []) is None
    assert stop_reached("Hello world. Bye", ["Bye", "."]) == "."
    assert stop_reached("a\n\nb", ["\n", "\n\n"]) == "\n\n"  # same start: the longer one


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(EngineConfig(threads=2))


def reply(engine: Engine, params: SamplingParams, **peer: object) -> tuple[str, list[int], str]:
    """(finish reason, token ids, text) of one reply to the chat prompt."""
    settings = settings_wire.to_pb(
        max_new_tokens=params.max_new_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        seed=params.seed,
        stop=params.stop,
    )
    conversation, local = local_reply(engine, settings, **peer)
    assert [f.step for f in local.frames] == list(range(len(local.frames)))
    assert [f.token_id for f in local.frames] == conversation.text_ids
    text = str(engine.tokenizer.decode(conversation.text_ids, skip_special_tokens=True))
    return conversation.stats.reason, conversation.text_ids, text


@pytest.mark.slow
def test_a_reply_ends_at_the_limit_at_a_stop_string_and_on_cancel(engine: Engine) -> None:
    reason, limited, text = reply(engine, SamplingParams(max_new_tokens=6))
    assert reason == "length" and len(limited) == 6
    # Stop at a word the greedy reply really contains: the reply is cut where it first appears.
    words = text.split()
    assert len(words) >= 2, text
    reason, stopped, stopped_text = reply(engine, SamplingParams(max_new_tokens=6, stop=[words[1]]))
    assert reason == "stop" and words[1] in stopped_text
    assert len(stopped) < 6 and stopped == limited[: len(stopped)]
    seen: list[int] = []
    # The tracker's cancel arrives with a step's Directive: that step's token is the reply's last.
    reason, cancelled, _ = reply(
        engine, SamplingParams(max_new_tokens=6), cancelled=lambda: len(seen.append(0) or seen) > 3
    )
    assert reason == "cancelled" and cancelled == limited[:4]


@pytest.mark.slow
def test_a_reply_ends_at_eos_and_seeded_replies_repeat(engine: Engine) -> None:
    reason, done, text = reply(engine, SamplingParams(max_new_tokens=40))
    assert reason == "eos" and done[-1] in engine.eos_token_ids, text
    sampled = [reply(engine, SamplingParams(max_new_tokens=5, temperature=0.9, top_p=0.9, seed=3)) for _ in range(2)]
    assert sampled[0][1] == sampled[1][1]


@pytest.mark.slow
def test_frames_carry_the_attention_of_the_forward_that_produced_them(engine: Engine) -> None:
    ids = prompt_ids(engine)
    conversation, local = local_reply(engine, settings_wire.to_pb(max_new_tokens=4, aggregation="mean"))
    for frame in local.frames:
        # Step 0 comes from the prefill (its last query sees the whole prompt); each later one sees one more token.
        assert len(frame.attention) == len(ids) + frame.step
    assert conversation.cache.positions == list(range(len(ids) + 3))  # the last sampled token is never fed
