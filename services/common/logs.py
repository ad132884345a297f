"""One log format for every service, so that interleaved output from `make run` stays readable."""

from __future__ import annotations

import logging
import os


def setup(service: str) -> None:
    logging.basicConfig(
        level=os.environ.get("HALOWEAVE_LOG_LEVEL", "INFO").upper(),
        format=f"%(asctime)s {service:<9} %(levelname)-5s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
