"""Snapshot ids: a save's folder name, `m<month>d<day>x<hour>x<minute>x<second>` in UTC, with `_2`, `_3`, ... appended
when that name is taken (DESIGN.md section 5).

Shared because two services check them: the snapshot service never lets anything else near a path, and the gateway
refuses a malformed id at its door, before a restore job is queued for it.
"""

from __future__ import annotations

import re

# Matched whole (fullmatch): `$` would also accept a trailing newline.
_ID = re.compile(
    r"m(1[0-2]|[1-9])d(3[01]|[12][0-9]|[1-9])x(2[0-3]|1[0-9]|[0-9])x([1-5]?[0-9])x([1-5]?[0-9])(_([2-9]|[1-9][0-9]+))?"
)
MAX_LENGTH = 32  # the longest id the pattern allows is far shorter; a cheap bound before the regex runs


def is_snapshot_id(text: str) -> bool:
    return len(text) <= MAX_LENGTH and _ID.fullmatch(text) is not None
