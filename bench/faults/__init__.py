"""`python -m bench.faults [--repeats N] [--quick]`: what each fault does to the conversations in flight.

One supervised stack (devstack, every service real, the SmolLM2 model on the CPU). Each fault is run `--repeats`
times: three sessions ask, and once every reply is under way one process is killed (SIGKILL) or stalled (SIGSTOP,
then SIGCONT after 30 s; 8 s with `--quick`). Every conversation is classified (tests/support/faults.py: completed
once, clear error, lost, duplicated), then asks again to show the system serves after the fault. Recovery is the
time from the fault to the first token delivered after it, or to the clear error. The `no fault` row is the same
round without a fault: its recovery is the gap to the next token, the floor the others are read against; the
spread (slowest − fastest recovery of a row) and the load average say how noisy the run was.

A worker fault kills the worker actor that holds the first conversation. To see a reply survive its worker the way
the design asks (a conversation of about 200 tokens, another worker idle or not):

    python -m bench.faults --only "no fault" "SIGKILL worker" --sessions 1 --strike-after 150 --max-new-tokens 220
    python -m bench.faults --only "no fault" "SIGKILL worker" --sessions 1 --strike-after 150 --max-new-tokens 220 \
        --workers 2

The output is a list of tables (`Table`): to report something more (say, the fuzzer's counts), write a function
that makes a `Table` from the run and add it to `TABLES` in `__main__`; it is printed and saved with the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        cells = [[cell(value) for value in row] for row in self.rows]
        widths = [max(len(name), *(len(row[i]) for row in cells)) for i, name in enumerate(self.columns)]
        head = _line(self.columns, widths)
        return "\n".join([self.title, head, "-" * len(head), *(_line(row, widths) for row in cells), *self.notes])

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "columns": self.columns, "rows": self.rows, "notes": self.notes}


def _line(values: list[str], widths: list[int]) -> str:
    """The first column left-aligned, the others right-aligned."""
    first, *rest = (f"{v:<{w}}" if i == 0 else f"{v:>{w}}" for i, (v, w) in enumerate(zip(values, widths, strict=True)))
    return "  ".join([first, *rest])


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)
