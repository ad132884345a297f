"""The gateway's Prometheus metrics (docs/architecture.md), on a registry of its own per app instance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Delivery is expected in the sub-millisecond to tens-of-milliseconds range; a slow socket shows up in the tail.
_DELIVERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.connections = Gauge("haloweave_gateway_connections", "Open WebSocket connections.", registry=self.registry)
        self.frames = Counter(
            "haloweave_gateway_frames",
            "WebSocket frames by direction (in = from clients, out = to clients) and type.",
            ["direction", "type"],
            registry=self.registry,
        )
        self.errors = Counter(
            "haloweave_gateway_errors", "Error frames and REST errors by code.", ["code"], registry=self.registry
        )
        self.delivery = Histogram(
            "haloweave_gateway_delivery_seconds",
            "From reading an event off the session Stream to writing it to the socket (live events only).",
            buckets=_DELIVERY_BUCKETS,
            registry=self.registry,
        )
