"""`make run`: start the whole system locally and print the chat page's URL; Ctrl-C stops everything it started.

The services are supervised: one that exits is started again on the same ports (devstack/supervisor.py), and the
console says so. Only Ctrl-C or SIGTERM stops the system.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from pathlib import Path

from redis.asyncio import Redis

from devstack.procs import free_port
from devstack.stack import Ports, Stack, default_workdir
from devstack.supervisor import sigterm_as_interrupt
from services.gateway.openai.api_keys import ensure_file_key

# The API key `make run` prints, kept (mode 0600) beside the stack's other state so every start prints the same one;
# Redis holds only its hash.
API_KEY_FILE = "openai-api-key"


def port_or_free(preferred: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("command", choices=["run"], nargs="?", default="run")
    parser.add_argument("--workers", type=int, default=1, help="inference worker actors (default 1)")
    parser.add_argument("--port", type=int, default=8000, help="gateway port (default 8000, or a free one if taken)")
    parser.add_argument(
        "--engine",
        choices=["native", "vllm"],
        default="native",
        help="the workers' engine (default native; vllm: docs/vllm.md, needs `make setup-vllm`)",
    )
    parser.add_argument("--snapshot-url", default=None, help="file:///dir (default: .state/run/snapshots) or s3://…")
    args = parser.parse_args(argv)

    ports = Ports.free()
    ports.gateway = port_or_free(args.port)
    workdir = default_workdir()
    print(f"Starting Halo Weave (state in {workdir}, logs in {workdir / 'logs'})", flush=True)
    stack = Stack(
        workdir=workdir,
        workers=args.workers,
        snapshot_url=args.snapshot_url,
        ports=ports,
        log=True,
        supervise=True,
        engine=args.engine,
    )

    sigterm_as_interrupt()
    try:
        stack.start()
        line = "=" * 64
        key = asyncio.run(_api_key(stack, workdir / API_KEY_FILE))
        print(f"\n{line}\n  Halo Weave is running. Open the chat:  {stack.gateway_url}/", flush=True)
        print(f"  OpenAI API: base_url={stack.gateway_url}/v1 api_key={key}\n{line}", flush=True)
        print("  Ctrl-C stops everything.", flush=True)
        while True:  # the supervisor's threads restart whatever exits
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0 if stack.supervisor is not None and stack.procs else 130
    except (TimeoutError, RuntimeError) as error:
        print(f"\nstart-up failed: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        print("\nstopping...", flush=True)
        stack.stop()
        print("stopped.", flush=True)


async def _api_key(stack: Stack, path: Path) -> str:
    redis = Redis.from_url(stack.redis_url)
    try:
        return await ensure_file_key(redis, path, "make run")
    finally:
        await redis.aclose()


if __name__ == "__main__":
    sys.exit(main())
