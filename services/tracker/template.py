"""The chat template as seen by the dictionary: how one message is rendered and tokenised, once.

The pieces (each role's header and trailer, the generation header, the default system prompt) are derived from the
tokenizer's own chat template by rendering marker messages, so another ChatML-like model works unchanged; a tokenizer
without a template falls back to ChatML. Tokenising each rendered message on its own gives exactly the ids of
`apply_chat_template` over the whole conversation (tested), so every token in the model's KV cache is one entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.common.errors import InvalidArgument

ROLES = ("system", "user", "assistant")
_MARK = "\x00HALOWEAVE-MARK\x00"
_CHATML = ("<|im_start|>{role}\n", "<|im_end|>\n")


@dataclass(frozen=True, slots=True)
class Tokenised:
    token_ids: list[int]
    pieces: list[str]


class ChatTemplate:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._pieces: dict[int, str] = {}
        self.prefixes: dict[str, str] = {}
        self.suffixes: dict[str, str] = {}
        try:
            self._derive()
        except Exception:  # no template, or one that refuses marker messages: ChatML is the common shape
            for role in ROLES:
                self.prefixes[role] = _CHATML[0].format(role=role)
                self.suffixes[role] = _CHATML[1]
            self.generation_header = self.prefixes["assistant"]
            self.default_system_prompt = ""
        eos = tokenizer.eos_token
        self.eos_token_id: int | None = tokenizer.eos_token_id
        self.eos_text: str = eos if isinstance(eos, str) else ""

    def _render(self, messages: list[dict[str, str]], generation: bool = False) -> str:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        return str(text)

    def _derive(self) -> None:
        system_only = self._render([{"role": "system", "content": _MARK}])
        prefix, suffix = system_only.split(_MARK)
        self.prefixes["system"], self.suffixes["system"] = prefix, suffix
        for role in ("user", "assistant"):
            text = self._render([{"role": "system", "content": _MARK}, {"role": role, "content": _MARK + "2"}])
            rest = text[len(system_only) :]
            self.prefixes[role], self.suffixes[role] = rest.split(_MARK + "2")
        user_only = [{"role": "user", "content": _MARK}]
        plain = self._render(user_only)
        self.generation_header = self._render(user_only, generation=True)[len(plain) :]
        # A template that inserts a default system turn shows it before the user turn.
        head = plain[: plain.index(self.prefixes["user"] + _MARK)]
        if head.startswith(self.prefixes["system"]) and head.endswith(self.suffixes["system"]):
            self.default_system_prompt = head[len(self.prefixes["system"]) : len(head) - len(self.suffixes["system"])]
        else:
            self.default_system_prompt = ""

    def render(self, role: str, text: str) -> str:
        if role not in ROLES:
            raise InvalidArgument(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        return self.prefixes[role] + text + self.suffixes[role]

    def tokenise(self, rendered: str) -> Tokenised:
        ids = [int(i) for i in self.tokenizer(rendered, add_special_tokens=False)["input_ids"]]
        return Tokenised(ids, self.pieces(ids))

    def pieces(self, ids: list[int]) -> list[str]:
        # Each id decoded alone: the text piece shown for that entry (a split multi-byte character shows as U+FFFD).
        # Cached per id: a generation step decodes one token, and the decoder call costs more than the rest of it.
        out = []
        for i in ids:
            piece = self._pieces.get(i)
            if piece is None:
                piece = self._pieces[i] = self.tokenizer.decode([i])
            out.append(piece)
        return out

    def trailer(self, last_token_id: int | None) -> str:
        """What closes a generated reply: the assistant suffix, minus the end token if the model produced it."""
        suffix = self.suffixes["assistant"]
        if last_token_id is not None and last_token_id == self.eos_token_id and suffix.startswith(self.eos_text):
            return suffix[len(self.eos_text) :]
        return suffix
