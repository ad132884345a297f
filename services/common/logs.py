"""One log format for every service, so that interleaved output from `make run` stays readable."""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field, field_validator

from services.common.config import EnvSettings


class LogSettings(EnvSettings):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", validation_alias="HALOWEAVE_LOG_LEVEL", description="Log level of every service (any case)."
    )

    @field_validator("level", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


def setup(service: str) -> None:
    logging.basicConfig(
        level=LogSettings().level,
        format=f"%(asctime)s {service:<9} %(levelname)-5s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
