"""Nothing the stack starts listens beyond loopback: every listening TCP socket of every process of every service
(Redis, tracker, snapshot, gateway, the inference driver and all of Ray's processes under it: GCS, raylet, agents,
the worker actors) is bound to 127.0.0.1, never to 0.0.0.0, `::` or the host's own address."""

from __future__ import annotations

import os

import psutil
import pytest

from devstack.stack import Stack

pytestmark = pytest.mark.e2e

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1"}  # the second is 127.0.0.1 on a dual-stack socket


def stack_processes(stack: Stack) -> dict[int, tuple[str, psutil.Process]]:
    """pid -> (service, process) for every service's process, its descendants and anything left in its group."""
    found: dict[int, tuple[str, psutil.Process]] = {}
    groups: dict[int, str] = {}
    for service, proc in stack.procs.items():
        leader = psutil.Process(proc.pid)
        groups[os.getpgid(proc.pid)] = service
        for process in [leader, *leader.children(recursive=True)]:
            found[process.pid] = (service, process)
    for process in psutil.process_iter():
        try:
            group = os.getpgid(process.pid)
        except ProcessLookupError:
            continue
        if group in groups:
            found.setdefault(process.pid, (groups[group], process))
    return found


def listening(process: psutil.Process) -> list[tuple[str, int]]:
    try:
        return [(c.laddr.ip, c.laddr.port) for c in process.net_connections(kind="tcp") if c.status == "LISTEN"]
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return []


def describe(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())[:100] or process.name()
    except psutil.Error:
        return "?"


def test_every_listening_socket_is_on_loopback(stack: Stack) -> None:
    processes = stack_processes(stack)
    sockets = [
        (service, pid, describe(process), ip, port)
        for pid, (service, process) in sorted(processes.items())
        for ip, port in listening(process)
    ]
    ray = [row for row in sockets if row[0] == "inference" and row[1] != stack.procs["inference"].pid]
    names = " ".join(row[2] for row in ray)
    # Not vacuous: Ray's own servers are among them.
    assert "gcs_server" in names and "raylet" in names and "ray::WorkerActor" in names, names
    exposed = [row for row in sockets if row[3] not in LOOPBACK]
    table = "\n".join(f"  {service:<9} pid {pid:<7} {ip}:{port}  {what}" for service, pid, what, ip, port in exposed)
    assert not exposed, f"listening beyond loopback:\n{table}"
