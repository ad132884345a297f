"""A Ray cluster as compose and Kubernetes run it: a head node with no compute (`--num-cpus=0`) and a separate worker
node, started with `ray start --block` as processes of their own and stopped by their own process ids. Token
authentication is on, as in the deployments. Everything listens on loopback."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devstack.procs import Proc, free_port, wait_until

RAY = str(Path(sys.executable).parent / "ray")
# `ray start` gives up when its raylet is not registered with the GCS within a fixed 30 s (ray/_private/node.py), which
# a GCS busy on a loaded 2-core machine can exceed; the node is then started again, as a supervisor would.
JOIN_ATTEMPTS = 3


@dataclass
class RayCluster:
    address: str
    env: dict[str, str]  # what every member and client of the cluster needs: auth mode and token
    temp_dir: Path  # the nodes' session files and logs (removed when the cluster stops)


def _node_ports() -> list[str]:
    # Free ports for everything a node would otherwise take from fixed defaults, so that it never meets another Ray.
    return [
        "--node-ip-address=127.0.0.1",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
    ]


def healthy(address: str, env: dict[str, str]) -> bool:
    check = [RAY, "health-check", "--address", address]
    return subprocess.run(check, env={**os.environ, **env}, capture_output=True, timeout=60).returncode == 0


def cluster_cpus(address: str, env: dict[str, str]) -> float:
    """The CPUs the cluster offers, from `ray status` (`0.0/2.0 CPU`): the head has none, so they are the workers'."""
    status = subprocess.run(
        [RAY, "status", "--address", address], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )
    match = re.search(r"[\d.]+/([\d.]+) CPU", status.stdout)
    return float(match.group(1)) if match else 0.0


@contextmanager
def ray_cluster(workdir: Path, worker_cpus: int) -> Iterator[RayCluster]:
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
    port = free_port()
    address = f"127.0.0.1:{port}"
    head_argv = [RAY, "start", "--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false"]
    # Ray's Unix sockets live about 70 characters under its temp dir and a socket path may not exceed 107 bytes, so
    # the temp dir is a short folder of its own rather than one under the test's (long) work dir.
    temp_dir = Path(tempfile.mkdtemp(prefix="hw-raycluster-"))
    head_argv += [f"--ray-client-server-port={free_port()}", f"--temp-dir={temp_dir}", "--block"]
    procs: list[Proc] = []
    try:
        head = Proc("ray-head", head_argv + _node_ports(), env, workdir / "ray-head.log")
        procs.append(head)
        wait_until(lambda: healthy(address, env), 90, "the Ray head", head)
        worker_argv = [RAY, "start", f"--address={address}", f"--num-cpus={worker_cpus}", "--block"]
        for attempt in range(1, JOIN_ATTEMPTS + 1):
            worker = Proc("ray-worker", worker_argv + _node_ports(), env, workdir / "ray-worker.log")
            procs.append(worker)
            try:
                wait_until(lambda: cluster_cpus(address, env) == worker_cpus, 90, "the worker node to join", worker)
                break
            except RuntimeError:  # it exited during its start-up (a node that never joins is a TimeoutError)
                if attempt == JOIN_ATTEMPTS:
                    raise
                worker.stop(timeout=5)
        yield RayCluster(address, env, temp_dir)
    finally:
        for proc in reversed(procs):
            # Ray drains for up to 30 s on SIGTERM; nothing is left to drain once the services are gone.
            proc.stop(timeout=5)
        shutil.rmtree(temp_dir, ignore_errors=True)
