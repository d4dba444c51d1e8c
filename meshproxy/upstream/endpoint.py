"""One upstream endpoint's live state, and the outcome of one request to it.

``EndpointState`` is shared by every cluster that contains the endpoint (the
service and each subset), so health, ejection, breaker state and counters are
properties of the endpoint, not of a view of it.  It holds data only: the
rules that change it live in ``health``, ``outlier`` and ``breakers``.
"""

from __future__ import annotations

import enum
import hashlib
from typing import Literal

from meshproxy.upstream.breakers import CLOSED, EndpointBreaker

Health = Literal["unknown", "healthy", "unhealthy"]


class Failure(enum.Enum):
    """A request that ended without an upstream response status."""

    CONNECT = "connect_failure"
    TIMEOUT = "timeout"
    RESET = "reset"


# Envoy, with local-origin errors not split from external ones, counts them as
# the gateway statuses an upstream proxy would have answered.
FAILURE_STATUS: dict[Failure, int] = {
    Failure.CONNECT: 503,
    Failure.TIMEOUT: 504,
    Failure.RESET: 502,
}

Outcome = int | Failure


class EndpointState:
    __slots__ = (
        "_ring",
        "active_connections",
        "active_requests",
        "address",
        "breaker",
        "consecutive_5xx",
        "consecutive_gateway",
        "eject_multiplier",
        "ejected",
        "ejected_until",
        "errors",
        "health",
        "labels",
        "last_unejected",
        "name",
        "port",
        "requests",
        "times_ejected",
        "weight",
        "zone",
    )

    def __init__(
        self,
        address: str,
        port: int,
        *,
        labels: dict[str, str] | None = None,
        zone: str | None = None,
        weight: int = 1,
        breaker: EndpointBreaker | None = None,
    ) -> None:
        self.address = address
        self.port = port
        self.name = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        self.labels = labels or {}
        self.zone = zone
        self.weight = weight
        self.breaker = breaker
        self.health: Health = "healthy"
        self.ejected = False
        self.ejected_until = 0.0
        self.last_unejected: float | None = None
        self.eject_multiplier = 0
        self.times_ejected = 0
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.requests = 0
        self.errors = 0
        self.active_requests = 0
        self.active_connections = 0
        self._ring: list[int] = []

    def __repr__(self) -> str:
        return f"EndpointState({self.name})"

    @property
    def routable(self) -> bool:
        """Eligible for ordinary picks: not failed by health checks, not
        ejected, breaker closed.  (Panic mode ignores all three.)"""
        breaker = self.breaker
        return (
            self.health != "unhealthy"
            and not self.ejected
            and (breaker is None or breaker.state == CLOSED)
        )

    def ring_hashes(self, count: int) -> list[int]:
        """The first ``count`` ring points of this endpoint, 32-bit like the key
        hash.  They depend only on the endpoint's name, so every rebuild (and
        every sidecar) puts them at the same places; cached because rings are
        rebuilt on every health change.  blake2b rather than CRC-32 here: CRC
        places the points of similar names unevenly, and this runs once."""
        ring = self._ring
        for i in range(len(ring), count):
            digest = hashlib.blake2b(f"{self.name}_{i}".encode(), digest_size=4).digest()
            ring.append(int.from_bytes(digest, "big"))
        return ring[:count]

    def admin_view(self, now: float | None) -> dict[str, object]:
        breaker = self.breaker
        view: dict[str, object] = {
            "address": self.address,
            "port": self.port,
            "zone": self.zone,
            "labels": dict(self.labels),
            "weight": self.weight,
            "health": self.health,
            "ejected": self.ejected,
            "times_ejected": self.times_ejected,
            "breaker": breaker.state if breaker is not None else None,
            "requests": self.requests,
            "errors": self.errors,
            "active_requests": self.active_requests,
            "active_connections": self.active_connections,
        }
        if self.ejected and now is not None:
            view["ejection_remaining"] = max(0.0, self.ejected_until - now)
        return view
