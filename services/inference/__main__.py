"""`python -m services.inference`: a local Ray with N worker actors, plus status, health and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from pathlib import Path

from services.common import lifecycle, logs
from services.inference.config import InferenceConfig

log = logging.getLogger("services.inference")
SERVICE = "haloweave.inference.v1.Inference"
# Ray puts Unix sockets about 70 characters deep under RAY_TMPDIR, and a socket path may not exceed 107 bytes.
RAY_TMPDIR_MAX = 36
LOOPBACK = "127.0.0.1"


def short_ray_tmpdir() -> Path | None:
    """A long RAY_TMPDIR (a test's or a stack's work folder) is reached through a short link in the system temp;
    returns the link's folder, to remove at exit."""
    configured = os.environ.get("RAY_TMPDIR")
    if not configured or len(configured) <= RAY_TMPDIR_MAX:
        return None
    Path(configured).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="hw-ray-", dir="/tmp"))
    (folder / "t").symlink_to(Path(configured).resolve(), target_is_directory=True)
    os.environ["RAY_TMPDIR"] = str(folder / "t")
    return folder


def local_ray_on_loopback() -> None:
    """Makes the private local Ray listen on 127.0.0.1 only: its GCS, raylet, agents and every worker's gRPC server.

    Ray binds its servers to the node's address, and with cluster support on (the default on Linux) it replaces a
    loopback node address by the host's own, with some servers on every interface. Cluster support off
    (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, read when `ray` is imported, inherited by the processes Ray starts) keeps
    the node on 127.0.0.1, which is all a private Ray needs. tests/e2e/test_listen.py checks every listening socket.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


async def serve(config: InferenceConfig) -> None:
    if config.ray_address == "local":
        local_ray_on_loopback()
    # Imported here, after the settings are read: a missing setting fails at once, not after loading torch and Ray.
    import ray
    from grpc_health.v1 import health_pb2
    from haloweave.inference.v1 import inference_pb2_grpc
    from prometheus_client import CollectorRegistry
    from redis.asyncio import Redis

    from services.common.grpc_server import Server
    from services.inference.driver import POLL_S, Driver
    from services.inference.server import InferenceServicer

    link_folder = None
    if config.ray_address == "local":
        link_folder = short_ray_tmpdir()
        # address="local" never joins a stray cluster; fractional actors share these CPUs. Loopback only (see
        # `local_ray_on_loopback`); no dashboard.
        ray.init(
            address="local",
            num_cpus=config.ray_num_cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
            _node_ip_address=LOOPBACK,
        )
    else:
        ray.init(address=config.ray_address, logging_level=logging.WARNING)
    redis = Redis.from_url(config.redis_url, socket_timeout=5.0, socket_connect_timeout=5.0)
    driver = Driver(config, redis)
    registry = CollectorRegistry()
    registry.register(driver.collector)
    lifecycle.start_metrics(config.metrics_port, config.listen, registry)
    server = Server(config.listen)
    server.add(inference_pb2_grpc.add_InferenceServicer_to_server, InferenceServicer(driver), SERVICE)
    await server.start()

    async def set_health(serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE):
            result = server.health.set(name, status)
            if asyncio.iscoroutine(result):
                await result

    await set_health(False)  # until the actors have loaded the model
    driver.start()
    stop = lifecycle.stop_on_signals()
    serving = False
    log.info("starting %d worker(s) on %s", config.workers, config.device)
    try:
        while not stop.is_set():
            ready = await driver.poll(redis)
            await driver.stream_lag(redis)
            if ready != serving:
                serving = ready
                await set_health(serving)
                log.info("workers %s", "serving" if serving else "not ready")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_S)
    finally:
        await set_health(False)
        await driver.stop()
        await server.stop(grace=2)
        await redis.aclose()
        ray.shutdown()
        if link_folder is not None:
            (link_folder / "t").unlink(missing_ok=True)
            link_folder.rmdir()


def main() -> None:
    logs.setup("inference")
    config = InferenceConfig.from_env()
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
