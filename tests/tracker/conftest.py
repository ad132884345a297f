"""Tracker fixtures: the real tokenizer (loaded once per session) and engines on the real Redis of `redis_url`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from services.common import events, keys, model_store
from services.tracker.engine import Engine
from services.tracker.store import Store
from services.tracker.template import ChatTemplate


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_store.model_path()))


@pytest.fixture(scope="session")
def template(tokenizer: Any) -> ChatTemplate:
    return ChatTemplate(tokenizer)


EngineFactory = Callable[[], Awaitable[Engine]]


@pytest.fixture
async def make_engine(redis_url: str, template: ChatTemplate) -> AsyncIterator[EngineFactory]:
    """Each call is a separate engine (its own cache and connection), like a separate replica."""
    clients: list[Redis] = []
    stores: list[Store] = []

    async def make() -> Engine:
        client = Redis.from_url(redis_url)
        clients.append(client)
        stores.append(Store(client))
        return Engine(stores[-1], template, "smollm2-135m-instruct", "test")

    yield make
    for store in stores:
        await store.aclose()
    for client in clients:
        await client.aclose()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def read_events(redis: Redis, session_id: str, after: int = 0) -> list[dict[str, Any]]:
    entries = await redis.xrange(keys.events_stream(session_id), f"({after}-0", "+")
    return [events.decode(entry_id, fields) for entry_id, fields in entries]
