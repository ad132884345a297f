"""Redis answers as text: clients made without `decode_responses` hand back bytes, the others str."""

from __future__ import annotations


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def text_or_none(value: object) -> str | None:
    """`text`, keeping a missing value (a GET of no key) as None."""
    return None if value is None else text(value)
