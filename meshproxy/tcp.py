"""L4 listeners (``protocol: tcp``): one upstream connection per client connection.

The endpoint is chosen by the service's cluster (its balancer, health and
ejections); a failed connect is reported to it, an open connection counts in
its gauges.  Bytes go both ways untouched.  Each side's write backpressure pauses the other
side's reading; a half-close (EOF) is passed on as a half-close so protocols
that shut down one direction first keep working.  Timeouts: connect
(``timeouts.connect``) and idle (``timeouts.idle``, no byte either way).

To a service whose policy turns mesh TLS on, the upstream connection is mTLS
to the endpoint's sidecar, checked against the service's SPIFFE ID
(``security.handshake.open_to``, as the HTTP data path does); a refusal is a
connect failure.  A TLS connection cannot carry a half-close (the loop's TLS
transports cannot write EOF alone), so a client's EOF towards one is not
passed on: the pair stays open for the answer until either side closes or the
idle timeout ends it.  On an inbound listener under mesh TLS (the runtime
admits it by the node's mode) the client side is the TLS one.

It must not look into the bytes.
"""

from __future__ import annotations

import asyncio
from typing import cast

from meshproxy.http1.context import ListenerContext
from meshproxy.resolve import LocalReply, Target
from meshproxy.security.handshake import open_to
from meshproxy.upstream import Failure

# Client bytes held while the upstream connection opens, before we stop reading.
PENDING_LIMIT = 65536


class _Side(asyncio.Protocol):
    """One of the two connections of a TCP proxy pair."""

    __slots__ = ("eof", "other", "pair", "tls", "transport")

    def __init__(self, pair: TcpProxy | None) -> None:
        self.pair = pair
        self.transport: asyncio.Transport | None = None
        self.other: _Side | None = None
        self.eof = False
        self.tls = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.tls = transport.get_extra_info("ssl_object") is not None

    def data_received(self, data: bytes) -> None:
        other = self.other
        if other is not None and other.transport is not None:
            other.transport.write(data)
        if self.pair is not None:
            self.pair.active = True

    def eof_received(self) -> bool | None:
        self.eof = True
        other = self.other
        if other is not None and other.transport is not None:
            if other.eof:
                return False  # both directions done
            if other.transport.can_write_eof():
                other.transport.write_eof()
            # Kept open: the other way still carries the answer (TLS
            # cannot pass the half-close on, see the module's docstring).
            # A TLS transport closes after EOF whatever we say (and logs a
            # warning when told to stay open).
            return not self.tls
        return False

    def pause_writing(self) -> None:
        other = self.other
        if other is not None and other.transport is not None:
            other.transport.pause_reading()

    def resume_writing(self) -> None:
        other = self.other
        if other is not None and other.transport is not None:
            other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        other = self.other
        self.other = None
        self.transport = None
        if other is not None:
            other.other = None
            if other.transport is not None:
                other.transport.close()
        if self.pair is not None:
            self.pair.closed()


class TcpProxy(_Side):
    """The client side; it owns the pair's timers and the upstream side."""

    __slots__ = (
        "active",
        "connect_timer",
        "connecting",
        "counted",
        "ctx",
        "idle_timer",
        "paused",
        "pending",
        "target",
    )

    def __init__(self, ctx: ListenerContext) -> None:
        super().__init__(None)
        self.pair = self
        self.ctx = ctx
        self.active = False
        self.connecting: asyncio.Future[tuple[asyncio.Transport, _Side]] | None = None
        self.connect_timer: asyncio.TimerHandle | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        # Bytes that arrive before the upstream connection exists.
        self.pending: list[bytes] | None = []
        self.paused = False
        self.target: Target | None = None
        self.counted = False  # the open connection counts in its endpoint's gauge

    def data_received(self, data: bytes) -> None:
        pending = self.pending
        if pending is None:
            super().data_received(data)
            return
        pending.append(data)
        if not self.paused and sum(map(len, pending)) > PENDING_LIMIT:
            self.paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        if self.pending is not None:
            self.eof = True  # passed on once connected
            return not self.tls
        return super().eof_received()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = client = cast(asyncio.Transport, transport)
        self.tls = transport.get_extra_info("ssl_object") is not None
        ctx = self.ctx
        ctx.connections.add(self)
        ctx.metrics.connection_opened(ctx.name)
        service = ctx.listener.service or ""
        loop = ctx.loop
        target = ctx.resolver.resolve_tcp(service, loop.time())
        if isinstance(target, LocalReply) or ctx.draining:
            client.close()
            return
        self.target = target
        fut = asyncio.ensure_future(
            open_to(
                target.service,
                ctx.mtls,
                lambda: _Side(self),
                target.host,
                target.port,
                ctx.connect_timeout,
            )
        )
        self.connecting = fut
        fut.add_done_callback(self.connected)
        self.connect_timer = loop.call_later(ctx.connect_timeout, self.connect_timeout)

    def connected(self, fut: asyncio.Future[tuple[asyncio.Transport, _Side]]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if self.connecting is not fut:
            if exc is None:
                fut.result()[0].close()
            return
        self.connecting = None
        if self.connect_timer is not None:
            self.connect_timer.cancel()
            self.connect_timer = None
        target = self.target
        if exc is not None or self.transport is None:
            if exc is not None and target is not None:
                target.cluster.on_result(target.endpoint, Failure.CONNECT, self.ctx.loop.time())
            if self.transport is not None:
                self.transport.close()
            elif exc is None:
                fut.result()[0].close()
            return
        if target is not None:
            target.cluster.connection_opened(target.endpoint)
            self.counted = True
        up = fut.result()[1]
        self.other = up
        up.other = self
        assert up.transport is not None
        if self.pending:
            up.transport.write(b"".join(self.pending))
        self.pending = None
        if self.eof and up.transport.can_write_eof():
            up.transport.write_eof()
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        self.idle_timer = self.ctx.loop.call_later(self.ctx.idle_timeout, self.idle_check)

    def connect_timeout(self) -> None:
        self.connect_timer = None
        target = self.target
        if target is not None:
            target.cluster.on_result(target.endpoint, Failure.TIMEOUT, self.ctx.loop.time())
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        if self.transport is not None:
            self.transport.close()

    def idle_check(self) -> None:
        # Activity is a flag set by either side; checked once per idle period.
        self.idle_timer = None
        if self.transport is None:
            return
        if self.active:
            self.active = False
            self.idle_timer = self.ctx.loop.call_later(self.ctx.idle_timeout, self.idle_check)
        else:
            self.transport.close()

    def closed(self) -> None:
        """Either side closed: release everything once."""
        ctx = self.ctx
        if self in ctx.connections:
            ctx.connections.discard(self)
            ctx.metrics.connection_closed(ctx.name)
        if self.counted and self.target is not None:
            self.counted = False
            self.target.cluster.connection_closed(self.target.endpoint)
        for timer in (self.connect_timer, self.idle_timer):
            if timer is not None:
                timer.cancel()
        self.connect_timer = self.idle_timer = None
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        if self.transport is not None:
            self.transport.close()

    def drain(self) -> None:
        """A byte stream has no safe stopping point: it runs until the drain
        deadline, when the runtime closes what is left."""

    def is_idle(self) -> bool:
        return False

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        other = self.other
        if other is not None and other.transport is not None:
            other.transport.close()
