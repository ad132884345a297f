"""API keys for the OpenAI-compatible API: a random secret per key, only its sha256 stored, compared in constant time.

A key reads `hwk_<key id>_<secret>`: the id finds the stored digest (as a session id finds a session token's in
services/gateway/auth.py), the secret is what is hashed. Each key owns the sessions it creates. The command

    python -m services.gateway.openai.api_keys create [--name NAME] | list | revoke KEY_ID

manages them in the Redis of HALOWEAVE_REDIS_URL; `list` shows ids, names and creation times, never a secret (which
`create` prints once).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from services.common import keys
from services.common.redis_text import text
from services.gateway import auth

PREFIX = "hwk_"
_KEY = re.compile(r"hwk_([0-9a-f]{16})_([A-Za-z0-9_-]{20,128})")
# Compared against when the id is unknown, so that an unknown id costs the same as a wrong secret.
_DUMMY_DIGEST = hashlib.sha256(b"no such api key").hexdigest()
MAX_NAME_CHARS = 200


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    name: str
    created: float


def looks_like_key(text: str) -> bool:
    """Whether a bearer token is meant as an API key (rather than a session token)."""
    return text.startswith(PREFIX)


async def create(redis: Redis, name: str = "", key: str | None = None) -> tuple[ApiKey, str]:
    """Stores a new key (or `key`, an existing one's full text, again: devstack restores the key it printed before
    into a fresh Redis). Returns the key and its full text, which is stored nowhere."""
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"a key's name has at most {MAX_NAME_CHARS} characters")
    if key is None:
        key = f"{PREFIX}{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
    match = _KEY.fullmatch(key)
    if match is None:
        raise ValueError("not an API key (expected hwk_<16 hex digits>_<secret>)")
    entry = ApiKey(match.group(1), name, time.time())
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(
            keys.api_key(entry.key_id),
            mapping={"digest": auth.digest(key), "name": entry.name, "created": f"{entry.created:.3f}"},
        )
        pipe.sadd(keys.API_KEYS, entry.key_id)
        await pipe.execute()
    return entry, key


async def verify(redis: Redis, key: str) -> str | None:
    """The id of the key when `key` is a valid, unrevoked API key; else None."""
    match = _KEY.fullmatch(key)
    key_id = match.group(1) if match else "0" * 16
    stored = await redis.hget(keys.api_key(key_id), "digest")
    expected = stored.decode() if isinstance(stored, bytes) else (stored or _DUMMY_DIGEST)
    matches = hmac.compare_digest(auth.digest(key), expected)
    return key_id if matches and match is not None and stored is not None else None


async def list_keys(redis: Redis) -> list[ApiKey]:
    found = []
    for raw in sorted(await redis.smembers(keys.API_KEYS)):  # type: ignore[misc]
        key_id = text(raw)
        raw_fields = await redis.hgetall(keys.api_key(key_id))  # type: ignore[misc]
        fields = {text(k): text(v) for k, v in raw_fields.items()}
        if fields:
            found.append(ApiKey(key_id, fields.get("name", ""), float(fields.get("created", "0"))))
    return sorted(found, key=lambda k: k.created)


async def revoke(redis: Redis, key_id: str) -> bool:
    """Deletes the key: it authorises nothing from now on. Its sessions stay, reachable by their session tokens
    only if they had any (sessions the API created have none), until they are erased."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.api_key(key_id))
        pipe.srem(keys.API_KEYS, key_id)
        deleted, _ = await pipe.execute()
    return bool(deleted)


async def ensure_file_key(redis: Redis, path: Path, name: str) -> str:
    """The key kept in `path` (mode 0600), stored again in Redis if it is not there; a new one when the file does
    not exist yet. For a development stack, so that every start prints the same key."""
    if path.exists():
        key = path.read_text().strip()
        if await verify(redis, key) is None:
            await create(redis, name, key)
        return key
    _, key = await create(redis, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    return key


async def _command(args: argparse.Namespace, redis_url: str) -> int:
    redis = Redis.from_url(redis_url)
    try:
        if args.command == "create":
            entry, key = await create(redis, args.name)
            print(f"created API key {entry.key_id} ({entry.name or 'no name'}); shown once, keep it:")
            print(key)
        elif args.command == "list":
            for entry in await list_keys(redis):
                created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry.created))
                print(f"{entry.key_id}  {created} UTC  {entry.name}")
        else:
            if not await revoke(redis, args.key_id):
                print(f"no API key {args.key_id}", file=sys.stderr)
                return 1
            print(f"revoked API key {args.key_id}")
        return 0
    finally:
        await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.gateway.openai.api_keys", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("create", help="create a key and print it (once)")
    make.add_argument("--name", default="", help="what the key is for")
    commands.add_parser("list", help="key ids, creation times and names")
    drop = commands.add_parser("revoke", help="delete a key")
    drop.add_argument("key_id")
    args = parser.parse_args(argv)
    redis_url = os.environ.get("HALOWEAVE_REDIS_URL")
    if not redis_url:
        print("set HALOWEAVE_REDIS_URL", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_command(args, redis_url))
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
