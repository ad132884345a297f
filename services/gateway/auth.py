"""Session tokens: a random secret per session, only its sha256 stored, compared in constant time.

The token is shown once, in the `session` frame that creates the session; whoever holds it owns the session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from redis.asyncio import Redis

from services.common import keys

# Compared against when a session has no stored hash, so that an unknown id costs the same as a wrong token.
_DUMMY_DIGEST = hashlib.sha256(b"no such session").hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def register(redis: Redis, session_id: str, token: str) -> None:
    # NX: a session's token is set once; a second registration for the same id is a bug, not a rotation.
    created = await redis.set(keys.auth_key(session_id), digest(token), nx=True)
    if not created:
        raise RuntimeError(f"session {session_id} already has a token")


async def check(redis: Redis, session_id: str, token: str | None) -> str:
    """Returns "ok", "unknown_session" or "unauthorized"."""
    stored = await redis.get(keys.auth_key(session_id))
    expected = stored.decode() if isinstance(stored, bytes) else (stored or _DUMMY_DIGEST)
    matches = hmac.compare_digest(digest(token or ""), expected)
    if stored is None:
        return "unknown_session"
    return "ok" if matches and token else "unauthorized"
