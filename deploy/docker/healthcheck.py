"""Container health check: `healthcheck.py grpc HOST:PORT` or `healthcheck.py http URL`; exit 0 when healthy.

The images carry no grpc_health_probe binary, so compose health checks run this with the image's own Python: the gRPC
form asks `grpc.health.v1` for the overall status (the same signal Kubernetes' gRPC probes use), the HTTP form expects
a 2xx answer (the gateway's /healthz).
"""

from __future__ import annotations

import sys
import urllib.request

TIMEOUT_S = 3.0


def grpc_serving(address: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        return 200 <= int(response.status) < 300


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("grpc", "http"):
        print("usage: healthcheck.py grpc HOST:PORT | healthcheck.py http URL", file=sys.stderr)
        return 2
    kind, target = argv[1], argv[2]
    try:
        healthy = grpc_serving(target) if kind == "grpc" else http_ok(target)
    except Exception as error:  # any failure to get an answer means unhealthy; say why for `docker inspect`
        print(f"unhealthy: {kind} {target}: {error}", file=sys.stderr)
        return 1
    if not healthy:
        print(f"unhealthy: {kind} {target} answered but is not serving", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
