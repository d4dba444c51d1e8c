"""Upstream state as metrics: endpoints by health, ejections, pool connections.

The upstream room keeps this state itself; here it is only *sampled*, from
the view ``Upstreams.snapshot_for_admin()`` gives (a callback the runtime
registers), once per periodic flush on the event loop that owns the state.
Nothing here runs per request.

This room must not change upstream state or read it from another thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["UpstreamGauges", "UpstreamView"]

UpstreamView = Callable[[], Mapping[str, Any]]
STATES = ("healthy", "unhealthy", "ejected")


class UpstreamGauges:
    def __init__(self, registry: CollectorRegistry, service_label: Callable[[str], str]) -> None:
        self.view: UpstreamView | None = None
        self._label = service_label
        self._ejections_seen: dict[str, int] = {}
        self._endpoints = Gauge(
            "meshproxy_upstream_endpoints",
            "Endpoints of each destination service by state (healthy / unhealthy / ejected).",
            ["destination_service", "state"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._connections = Gauge(
            "meshproxy_upstream_connections",
            "Connections open to the endpoints of each destination service.",
            ["destination_service"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._requests = Gauge(
            "meshproxy_upstream_active_requests",
            "Requests in flight to each destination service.",
            ["destination_service"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._ejections = Counter(
            "meshproxy_outlier_ejections",
            "Endpoints ejected by outlier detection.",
            ["destination_service"],
            registry=registry,
        )

    def sample(self) -> None:
        view = self.view
        if view is None:
            return
        for name, service in view().items():
            label = self._label(str(name))
            endpoints = (service.get("endpoints") or []) if isinstance(service, Mapping) else []
            states = dict.fromkeys(STATES, 0)
            connections = requests = ejections = 0
            for ep in endpoints:
                if ep.get("ejected"):
                    states["ejected"] += 1
                elif ep.get("health") == "unhealthy":
                    states["unhealthy"] += 1
                else:
                    states["healthy"] += 1
                connections += int(ep.get("active_connections", 0))
                requests += int(ep.get("active_requests", 0))
                ejections += int(ep.get("times_ejected", 0))
            for state, count in states.items():
                self._endpoints.labels(label, state).set(count)
            self._connections.labels(label).set(connections)
            self._requests.labels(label).set(requests)
            # A new snapshot may rebuild endpoints with fresh counters: never count down.
            seen = self._ejections_seen.get(label, 0)
            if ejections > seen:
                self._ejections.labels(label).inc(ejections - seen)
            self._ejections_seen[label] = ejections
