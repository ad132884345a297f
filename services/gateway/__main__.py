"""`python -m services.gateway`: the gateway under uvicorn, configured from the environment."""

from __future__ import annotations

import uvicorn

from services.common import logs
from services.gateway import sockets
from services.gateway.app import create_app
from services.gateway.config import GatewayConfig


def main() -> None:
    logs.setup("gateway")
    config = GatewayConfig.from_env()
    uvicorn.run(
        create_app(config),
        host=config.host,
        port=config.port,
        ws=sockets.LingerBoundedProtocol,
        ws_max_size=config.hard_frame_bytes,
        # Frames are small JSON sent at token rate; compressing each costs more latency than loopback saves.
        ws_per_message_deflate=False,
        log_level="warning",
        lifespan="on",
    )


if __name__ == "__main__":
    main()
