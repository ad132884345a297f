"""The OpenAI API's parts that need no model: request parsing, the reply's text, API keys (and their command) and the
conversation index, on a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from services.common import keys
from services.gateway import auth
from services.gateway.openai import api_keys, conversation
from services.gateway.openai.errors import OpenAIError
from services.gateway.openai.models import parse_request
from services.gateway.openai.params import settings_for
from services.gateway.openai.reply import _Text


def _body(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": "Hi."}], **fields}).encode()


def test_a_request_maps_onto_the_session_settings() -> None:
    request = parse_request(_body(max_completion_tokens=5, temperature=0.5, stop="END", seed=3, n=1, logprobs=False))
    assert settings_for(request) == {
        "max_new_tokens": 5,
        "temperature": 0.5,
        "top_p": 1.0,
        "seed": 3,
        "stop": ["END"],
    }
    # Parameters not given take the settings' defaults, not what an earlier request asked.
    assert settings_for(parse_request(_body())) == {
        "max_new_tokens": 128,
        "temperature": 0.0,
        "top_p": 1.0,
        "seed": 0,
        "stop": [],
    }


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 3}, "n"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"frequency_penalty": 1}, "frequency_penalty"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"stream_options": {"include_obfuscation": True}}, "stream_options.include_obfuscation"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "messages.0.content.0.type"),
        ({"messages": [{"role": "user", "content": "Hi.", "name": "bob"}]}, "messages.0.name"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"max_tokens": 3, "max_completion_tokens": 4}, "max_completion_tokens"),
        ({"top_p": 0}, "top_p"),
        ({"stream": "yes"}, "stream"),
    ],
)
def test_what_is_not_supported_is_refused_by_name(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(OpenAIError) as refused:
        parse_request(_body(**fields))
    assert refused.value.status == 400 and refused.value.param == param


def test_the_reply_text_holds_back_the_end_token_and_stop_strings() -> None:
    text = _Text(stop=["STOP"])
    given = [text.add(p) for p in ["Hel", "lo", " ST", "O", "P", " more"]]
    assert "".join(given) == "Hello "  # " ST" might begin the stop string: held until it does not
    assert text.finish("stop") == ""
    eos = _Text(stop=[])
    assert "".join([eos.add(p) for p in ["A", "B", "<|im_end|>"]]) + eos.finish("eos") == "AB"
    length = _Text(stop=["zz"])
    assert "".join([length.add(p) for p in ["a", "z"]]) + length.finish("length") == "az"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_keys_are_stored_hashed_verified_listed_and_revoked(redis: Redis) -> None:
    entry, secret = await api_keys.create(redis, "ci")
    assert await api_keys.verify(redis, secret) == entry.key_id
    stored = await redis.hgetall(keys.api_key(entry.key_id))  # type: ignore[misc]
    assert secret.encode() not in b"".join([*stored.keys(), *stored.values()])
    assert stored[b"digest"] == auth.digest(secret).encode()
    assert await api_keys.verify(redis, secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert await api_keys.verify(redis, "hwk_" + "0" * 16 + "_" + "x" * 43) is None
    assert await api_keys.verify(redis, "nonsense") is None
    assert [k.key_id for k in await api_keys.list_keys(redis)] == [entry.key_id]
    assert await api_keys.revoke(redis, entry.key_id)
    assert await api_keys.verify(redis, secret) is None
    assert not await api_keys.revoke(redis, entry.key_id)


async def test_a_key_kept_in_a_file_is_the_same_on_every_start(redis: Redis, tmp_path: Any) -> None:
    path = tmp_path / "state" / "openai-api-key"
    first = await api_keys.ensure_file_key(redis, path, "dev")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    await redis.flushdb()  # a fresh Redis: the key is stored again
    assert await api_keys.ensure_file_key(redis, path, "dev") == first
    assert await api_keys.verify(redis, first) is not None


def test_the_command_creates_lists_and_revokes(redis_url: str) -> None:
    env = {**os.environ, "HALOWEAVE_REDIS_URL": redis_url}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "services.gateway.openai.api_keys", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    created = run("create", "--name", "laptop")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip().splitlines()[-1]
    assert secret.startswith("hwk_")
    key_id = secret.split("_")[1]
    listed = run("list")
    assert key_id in listed.stdout and "laptop" in listed.stdout and secret not in listed.stdout
    assert run("revoke", key_id).returncode == 0
    assert key_id not in run("list").stdout
    assert run("revoke", key_id).returncode == 1


async def test_the_index_follows_a_conversation_and_its_erase_finds_every_entry(redis: Redis) -> None:
    one: list[conversation.Turn] = [("user", "Hi.")]
    two = [*one, ("assistant", "Hello.")]
    await conversation.adopt(redis, "s1", "k1")
    assert await conversation.owner(redis, "s1") == "k1"
    assert not await conversation.claim(redis, "s1", one)  # no reply yet: no history to continue
    await conversation.record(redis, "k1", "s1", two, None)
    assert await conversation.find(redis, "k1", two) == "s1"
    assert await conversation.find(redis, "k2", two) is None  # another key's index
    assert await conversation.claim(redis, "s1", two)
    assert not await conversation.claim(redis, "s1", two)  # taken: a second request cannot continue it at once
    three = [*two, ("user", "Again."), ("assistant", "Yes.")]
    await conversation.record(redis, "k1", "s1", three, two)
    assert await conversation.find(redis, "k1", two) is None and await conversation.find(redis, "k1", three) == "s1"
    # The erase of a session finds the index entries in its registry and the rest by its hash tag.
    registry = {m.decode() for m in await redis.smembers(keys.session_registry("s1"))}  # type: ignore[misc]
    assert registry == {keys.openai_conversation("k1", conversation.digest(three))}
    tagged = {k.decode() async for k in redis.scan_iter(match=keys.session_match("s1"))}
    assert tagged >= {keys.openai_owner("s1"), keys.openai_history("s1"), keys.session_registry("s1")}
    await conversation.forget(redis, "s1")
    assert await conversation.find(redis, "k1", three) is None and await conversation.owner(redis, "s1") is None
