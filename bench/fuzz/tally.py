"""What a fuzzer counts: every input it tried, and how the system answered it.

An input is *accepted* (the system did what was asked), *refused* (a clear, documented refusal: an `error` frame with
a known code, a 4xx with a `{code, message}` body, a gRPC status such as INVALID_ARGUMENT with a message, a documented
close code) or a *crash*: a 5xx, an UNKNOWN or INTERNAL status, an unexpected close, no answer, a server that stopped
answering, or an invariant broken (a refused input that changed state, an answer that breaks its schema).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

# Crash details kept per fuzzer (the first ones; a run with many crashes repeats the same few causes).
KEPT_DETAILS = 20


class Verdict(enum.Enum):
    ACCEPTED = "accepted"
    REFUSED = "refused"
    CRASH = "crash"


class Crash(AssertionError):
    """A broken promise found while driving one input; the fuzzer records it and, under test, fails with it."""


@dataclass
class Tally:
    fuzzer: str
    inputs: int = 0
    crashes: int = 0
    refusals: int = 0
    accepted: int = 0
    details: list[str] = field(default_factory=list)

    def add(self, verdict: Verdict, detail: str = "") -> None:
        self.inputs += 1
        if verdict is Verdict.ACCEPTED:
            self.accepted += 1
        elif verdict is Verdict.REFUSED:
            self.refusals += 1
        else:
            self.crashes += 1
            # One example of each kind (crashes of one cause share the start of their description).
            if len(self.details) < KEPT_DETAILS and not any(d[:60] == detail[:60] for d in self.details):
                self.details.append(detail)

    def row(self) -> dict[str, Any]:
        return {
            "fuzzer": self.fuzzer,
            "inputs": self.inputs,
            "crashes": self.crashes,
            "refusals": self.refusals,
            "accepted": self.accepted,
        }
