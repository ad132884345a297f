"""The KV cache table's LRU order and byte budget."""

from __future__ import annotations

from dataclasses import dataclass

from services.inference.sessions import SessionTable


@dataclass
class Blob:
    nbytes: int


def test_least_recently_used_go_first_and_the_one_in_use_stays() -> None:
    table: SessionTable[Blob] = SessionTable(budget_bytes=250)
    for name in ("a", "b", "c"):
        table.put(name, Blob(100))
    assert table.total_bytes == 300
    table.get("a")  # a is now the most recent
    assert table.over_budget(keep={"c"}) == ["b"]
    assert table.over_budget(keep={"b"}) == ["c"]
    table.put("d", Blob(100))
    assert table.over_budget(keep={"d"}) == ["b", "c"]


def test_a_single_session_larger_than_the_budget_is_kept() -> None:
    table: SessionTable[Blob] = SessionTable(budget_bytes=10)
    table.put("big", Blob(100))
    assert table.over_budget(keep={"big"}) == []
    assert table.pop("big") == Blob(100)
    assert len(table) == 0 and table.get("big") is None
