"""The chat template: per-message tokenisation reproduces apply_chat_template over the whole conversation."""

from __future__ import annotations

from typing import Any

from services.tracker.template import ChatTemplate


def _ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
    return [int(i) for i in ids]


def test_default_system_prompt_comes_from_the_template(template: ChatTemplate) -> None:
    assert template.default_system_prompt == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert template.prefixes["user"] == "<|im_start|>user\n"
    assert template.suffixes["assistant"] == "<|im_end|>\n"
    assert template.generation_header == "<|im_start|>assistant\n"


def test_messages_tokenised_one_by_one_equal_the_whole_conversation(template: ChatTemplate, tokenizer: Any) -> None:
    conversation = [
        ("user", "Hello there. How are you?\nFine!"),
        ("assistant", "I am well, thanks. Numbers: 3.14, ünïcödé and 日本語."),
        ("user", "  leading spaces and trailing  "),
    ]
    ids: list[int] = []
    ids += template.tokenise(template.render("system", template.default_system_prompt)).token_ids
    for role, text in conversation:
        ids += template.tokenise(template.render(role, text)).token_ids
    ids += template.tokenise(template.generation_header).token_ids
    expected = _ids(tokenizer, [{"role": r, "content": t} for r, t in conversation])
    assert ids == expected


def test_trailer_drops_the_end_token_the_model_produced(template: ChatTemplate) -> None:
    assert template.trailer(None) == "<|im_end|>\n"
    assert template.trailer(123) == "<|im_end|>\n"
    assert template.trailer(template.eos_token_id) == "\n"


def test_pieces_are_the_decoded_tokens(template: ChatTemplate) -> None:
    tokenised = template.tokenise("<|im_start|>user\nHi.<|im_end|>\n")
    assert "".join(tokenised.pieces) == "<|im_start|>user\nHi.<|im_end|>\n"
    assert len(tokenised.pieces) == len(tokenised.token_ids)
