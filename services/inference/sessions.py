"""The KV caches a worker holds between turns, least recently used first, under a byte budget.

The table only keeps order and sizes; the worker decides what to do with the sessions that no longer fit (offload
them through the snapshot service, or drop them: the tracker's active tokens can always rebuild a cache).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection
from typing import Generic, Protocol, TypeVar


class Sized(Protocol):
    @property
    def nbytes(self) -> int: ...


C = TypeVar("C", bound=Sized)


class SessionTable(Generic[C]):
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._caches: OrderedDict[str, C] = OrderedDict()

    def __len__(self) -> int:
        return len(self._caches)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._caches

    def get(self, session_id: str) -> C | None:
        """The session's cache, marked as the most recently used."""
        cache = self._caches.get(session_id)
        if cache is not None:
            self._caches.move_to_end(session_id)
        return cache

    def put(self, session_id: str, cache: C) -> None:
        self._caches[session_id] = cache
        self._caches.move_to_end(session_id)

    def pop(self, session_id: str) -> C | None:
        return self._caches.pop(session_id, None)

    @property
    def total_bytes(self) -> int:
        return sum(cache.nbytes for cache in self._caches.values())

    def over_budget(self, keep: Collection[str] = ()) -> list[str]:
        """Sessions to let go, least recently used first, until the rest fits; those in `keep` (in use) stay."""
        total = self.total_bytes
        victims: list[str] = []
        for session_id, cache in self._caches.items():
            if total <= self.budget_bytes:
                break
            if session_id in keep:
                continue
            victims.append(session_id)
            total -= cache.nbytes
        return victims

    def sessions(self) -> list[str]:
        return list(self._caches)

    def caches(self) -> list[C]:
        """Every cache, least recently used first, without touching the order."""
        return list(self._caches.values())
