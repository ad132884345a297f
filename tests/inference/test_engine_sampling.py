"""Sampling parameters, seeded sampling, stop strings, and a whole reply with its finish reasons."""

from __future__ import annotations

import pytest
import torch

from services.inference.engine import Engine, EngineConfig, Generation, Sampler, SamplingParams, stop_reached

from .engine_support import prompt_ids


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
        return [sampler.sample(x) for x in logits]

    assert run(11) == run(11)
    assert run(11) != run(12)
    # At temperature 1 over 1000 near-flat choices, sampling is not secretly greedy.
    assert run(11) != [int(torch.argmax(x)) for x in logits]


def test_top_p_keeps_only_the_nucleus() -> None:
    logits = torch.full((50,), -10.0)
    logits[7], logits[3] = 5.0, 4.0  # ~73% and ~27% of the mass; everything else is negligible
    narrow = Sampler(SamplingParams(temperature=1.0, top_p=0.5, seed=0))
    assert {narrow.sample(logits) for _ in range(50)} == {7}
    wide = Sampler(SamplingParams(temperature=1.0, top_p=0.99, seed=0))
    assert {wide.sample(logits) for _ in range(200)} == {3, 7}


def test_stop_reached_finds_the_earliest_stop_string() -> None:
    assert stop_reached("Hello world", ["xyz"]) is None
    assert stop_reached("Hello world", []) is None
    assert stop_reached("Hello world. Bye", ["Bye", "."]) == "."
    assert stop_reached("a\n\nb", ["\n", "\n\n"]) == "\n\n"  # same start: the longer one


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(EngineConfig(threads=2))


def reply(engine: Engine, params: SamplingParams, **kwargs: object) -> Generation:
    ids = prompt_ids(engine)
    generation = Generation(engine, engine.new_cache(), ids, list(range(len(ids))), params, **kwargs)  # type: ignore[arg-type]
    steps = list(generation)
    assert [s.index for s in steps] == list(range(len(steps)))
    assert [s.token_id for s in steps] == generation.token_ids
    return generation


@pytest.mark.slow
def test_a_reply_ends_at_the_limit_at_a_stop_string_and_on_cancel(engine: Engine) -> None:
    limited = reply(engine, SamplingParams(max_new_tokens=6))
    assert limited.reason == "length" and len(limited.token_ids) == 6
    # Stop at a word the greedy reply really contains: the reply is cut where it first appears.
    words = limited.text.split()
    assert len(words) >= 2, limited.text
    stopped = reply(engine, SamplingParams(max_new_tokens=6, stop=[words[1]]))
    assert stopped.reason == "stop" and words[1] in stopped.text
    assert len(stopped.token_ids) < 6 and stopped.token_ids == limited.token_ids[: len(stopped.token_ids)]
    seen: list[int] = []
    cancelled = reply(engine, SamplingParams(max_new_tokens=6), cancelled=lambda: len(seen.append(0) or seen) > 3)
    assert cancelled.reason == "cancelled" and cancelled.token_ids == limited.token_ids[:3]


@pytest.mark.slow
def test_a_reply_ends_at_eos_and_seeded_replies_repeat(engine: Engine) -> None:
    done = reply(engine, SamplingParams(max_new_tokens=40))
    assert done.reason == "eos" and done.token_ids[-1] in engine.eos_token_ids, done.text
    sampled = [reply(engine, SamplingParams(max_new_tokens=5, temperature=0.9, top_p=0.9, seed=3)) for _ in range(2)]
    assert sampled[0].token_ids == sampled[1].token_ids


@pytest.mark.slow
def test_steps_carry_the_attention_of_the_forward_that_produced_them(engine: Engine) -> None:
    ids = prompt_ids(engine)
    steps = list(Generation(engine, engine.new_cache(), ids, list(range(len(ids))), SamplingParams(4), "mean"))
    for step in steps:
        # Step 0 comes from the prefill (its last query sees the whole prompt); each later one sees one more token.
        assert step.output.attention is not None and step.output.attention.shape == (len(ids) + step.index,)
        assert step.position == len(ids) + step.index
