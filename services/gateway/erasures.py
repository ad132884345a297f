"""Telling every gateway that a session has been erased, so that each closes the WebSocket connections bound to it.

The erase (services/gateway/erase.py) publishes the session id on `keys.SESSION_ERASED_CHANNEL`; every gateway
subscribes (`watch`) and ends its connections of that session with a `session_deleted` error frame and close code
4410. Publish/subscribe keeps nothing in Redis; a gateway that is not subscribed at that moment (restarting) has
no connections to close.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.common import keys

log = logging.getLogger(__name__)

RETRY_S = (0.5, 5.0)  # first and longest wait before subscribing again after Redis went away


class SessionSockets:
    """The connections of this gateway by session, each with the callback that ends it."""

    def __init__(self) -> None:
        self._by_session: dict[str, dict[str, Callable[[], None]]] = {}

    def add(self, session_id: str, connection_id: str, end: Callable[[], None]) -> None:
        self._by_session.setdefault(session_id, {})[connection_id] = end

    def discard(self, session_id: str, connection_id: str) -> None:
        bound = self._by_session.get(session_id)
        if bound is not None:
            bound.pop(connection_id, None)
            if not bound:
                del self._by_session[session_id]

    def end(self, session_id: str) -> int:
        """Ends every connection bound to the session; returns how many."""
        bound = list((self._by_session.pop(session_id, None) or {}).values())
        for end in bound:
            end()
        return len(bound)


async def announce(redis: Redis, session_id: str) -> None:
    await redis.publish(keys.SESSION_ERASED_CHANNEL, session_id)


async def watch(redis: Redis, sockets: SessionSockets, subscribed: asyncio.Event | None = None) -> None:
    """Runs until cancelled: ends the connections of every session announced as erased."""
    delay, longest = RETRY_S
    while True:
        try:
            async with redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(keys.SESSION_ERASED_CHANNEL)
                if subscribed is not None:
                    subscribed.set()
                delay = RETRY_S[0]
                async for message in pubsub.listen():
                    data = message.get("data")
                    session_id = data.decode() if isinstance(data, bytes) else str(data)
                    ended = sockets.end(session_id)
                    if ended:
                        log.info("session %s erased: %d connection(s) closed", session_id, ended)
        except RedisError as error:
            log.warning("erasure announcements unavailable (%s); subscribing again in %.1f s", error, delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, longest)
