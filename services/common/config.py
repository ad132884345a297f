"""Reading a service's settings from the environment, at start-up (never at import time).

Peers are given as `HALOWEAVE_<PEER>_ADDR`; a missing required one stops the service at once with a message that says
which variable to set.
"""

from __future__ import annotations

import os


class ConfigError(SystemExit):
    def __init__(self, message: str) -> None:
        super().__init__(f"configuration error: {message}")


def require(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"{name} is not set (it names a peer this service needs)")
    return value


def get(name: str, default: str) -> str:
    return os.environ.get(name) or default


def get_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None


def get_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
