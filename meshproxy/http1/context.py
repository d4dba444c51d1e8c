"""What every connection of one listener shares: settings, resolver, pool,
metrics and the exchange observer.

One ``ListenerContext`` per listener per worker.  The runtime swaps
``resolver`` when a new snapshot is accepted and sets ``draining`` on
shutdown; protocols read both at each request, so a swap takes effect between
requests without touching open connections.  ``MetricsObserver`` is the
observer used when none is given: it only counts requests in ``metrics``.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Protocol

from meshproxy.config import Listener
from meshproxy.http1.pool import IdlePool
from meshproxy.observe.exchange import Exchange, Observer
from meshproxy.resolve import Resolver

if TYPE_CHECKING:
    from meshproxy.http1.policy import ListenerPolicy
    from meshproxy.http1.upstream import UpstreamConnection, UpstreamKey
    from meshproxy.security.mesh import MeshTLS


class MetricsSink(Protocol):
    """The part of ``observe.metrics.ProxyMetrics`` the data path calls."""

    def request_done(self, listener: str, service: str, status: int, duration_s: float) -> None: ...

    def connection_opened(self, listener: str) -> None: ...

    def connection_closed(self, listener: str) -> None: ...


class NullMetrics:
    """Metrics that record nothing (tests, or a build without the observe room)."""

    def request_done(self, listener: str, service: str, status: int, duration_s: float) -> None:
        pass

    def connection_opened(self, listener: str) -> None:
        pass

    def connection_closed(self, listener: str) -> None:
        pass


class MetricsObserver:
    """An observer that feeds ``MetricsSink.request_done`` and nothing else."""

    __slots__ = ("metrics",)

    def __init__(self, metrics: MetricsSink) -> None:
        self.metrics = metrics

    def exchange_started(
        self, exchange: Exchange, headers: list[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        return []

    def exchange_done(self, exchange: Exchange) -> None:
        self.metrics.request_done(
            exchange.listener, exchange.destination_service, exchange.status, exchange.duration
        )


class Closable(Protocol):
    """A client connection as the drain sees it."""

    def drain(self) -> None: ...

    def is_idle(self) -> bool: ...

    def close(self) -> None: ...


class ListenerContext:
    __slots__ = (
        "connect_timeout",
        "connections",
        "direction",
        "draining",
        "http10_endpoints",
        "idle_timeout",
        "listener",
        "loop",
        "max_head",
        "max_headers",
        "metrics",
        "mtls",
        "name",
        "observer",
        "policy",
        "pool",
        "request_head_timeout",
        "request_timeout",
        "resolver",
        "source_service",
        "upstream_idle",
        "wall_offset",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listener: Listener,
        resolver: Resolver,
        metrics: MetricsSink,
        max_head: int = 61440,
        max_headers: int = 100,
        observer: Observer | None = None,
        source_service: str = "unknown",
    ) -> None:
        self.loop = loop
        self.listener = listener
        self.name = listener.name
        self.direction = listener.direction
        self.source_service = source_service
        self.resolver = resolver
        self.metrics = metrics
        self.observer: Observer = observer if observer is not None else MetricsObserver(metrics)
        self.max_head = max_head
        self.max_headers = max_headers
        t = listener.timeouts
        self.connect_timeout = t.connect
        self.request_timeout = t.request
        self.idle_timeout = t.idle
        self.request_head_timeout = t.request_head
        self.upstream_idle = t.upstream_idle
        self.pool: IdlePool[UpstreamConnection] = IdlePool()
        self.connections: set[Closable] = set()
        self.draining = False
        # The policy filter chain (``http1.policy``); None: no filter at all.
        self.policy: ListenerPolicy | None = None
        # Outbound listeners of a sidecar with an identity: mTLS to the
        # services whose policy turns it on (``security.mesh``); else None.
        self.mtls: MeshTLS | None = None
        # Epoch seconds = loop time + this: one clock read per exchange, not two.
        self.wall_offset = time.time() - loop.time()
        # Endpoints that answered in HTTP/1.0: they never send 100 Continue.
        self.http10_endpoints: set[UpstreamKey] = set()

    def drain(self) -> None:
        """Stop keeping connections alive: idle ones close now, busy ones after
        their current response (which then says ``Connection: close``)."""
        self.draining = True
        for conn in list(self.connections):
            conn.drain()
        for up in self.pool.take_all():
            up.close()

    def close_all(self) -> None:
        for conn in list(self.connections):
            conn.close()

    def busy_connections(self) -> int:
        return sum(1 for conn in self.connections if not conn.is_idle())
