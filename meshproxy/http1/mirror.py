"""Mirrored requests: a copy of a request sent to a shadow cluster, its answer
read and dropped.

Fire and forget: each copy opens its own connection (never the pool's, so a
slow mirror cannot hold a connection the primary traffic wants), writes the
whole request at once, reads the response only to find its end, and closes.
A timer bounds the whole thing; a failure is dropped silently (a TLS
refusal is still counted by the mesh's refusals).  The primary exchange never
waits for any of it and never sees its outcome.  A mirror to a service whose
policy turns mesh TLS on goes over mTLS to its sidecar, checked against that
service's SPIFFE ID, exactly as the primary traffic would.

What is mirrored is decided by the caller (``server``): only requests whose
body is complete when the head is dispatched and at most ``REPLAY_LIMIT``
bytes; anything streamed or larger is not mirrored (a copy would have to be
held or sent at the primary's pace).

It must not touch the client connection or the primary exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, cast

from meshproxy import fastpath as fp
from meshproxy.security.handshake import open_to
from meshproxy.upstream import Cluster, EndpointState

if TYPE_CHECKING:
    from meshproxy.http1.context import ListenerContext


class MirrorExchange(asyncio.Protocol):
    __slots__ = (
        "buf",
        "cluster",
        "decoder",
        "endpoint",
        "method",
        "payload",
        "remaining",
        "timer",
        "transport",
        "until_close",
    )

    def __init__(
        self, cluster: Cluster, endpoint: EndpointState, payload: bytes, method: bytes
    ) -> None:
        self.cluster: Cluster | None = cluster
        self.endpoint = endpoint
        self.payload = payload
        self.method = method
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.remaining = -1  # -1: the response head is not read yet
        self.decoder: fp.ChunkedDecoder | None = None
        self.until_close = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.payload)
        self.payload = b""

    def data_received(self, data: bytes) -> None:
        if self.remaining < 0 and not self.until_close and self.decoder is None:
            self.buf += data
            try:
                got = fp.parse_response_head(self.buf, 0, self.method)
            except fp.ParseError:
                self.close()
                return
            if got is None:
                return
            head, end = got
            if head.status < 200:
                del self.buf[:end]  # interim answer: the real one follows
                return
            data = bytes(self.buf[end:])
            self.buf = bytearray()
            if head.body == fp.BODY_LENGTH:
                self.remaining = head.content_length
            elif head.body == fp.BODY_CHUNKED:
                self.decoder = fp.ChunkedDecoder(response=True)
            elif head.body == fp.BODY_UNTIL_CLOSE:
                self.until_close = True
                return
            else:
                self.close()
                return
        if self.decoder is not None:
            try:
                self.decoder.feed(data)
            except fp.ParseError:
                self.close()
                return
            if self.decoder.done:
                self.close()
        elif self.remaining >= 0:
            self.remaining -= len(data)
            if self.remaining <= 0:
                self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        cluster = self.cluster
        if cluster is not None:
            self.cluster = None
            cluster.request_finished(self.endpoint)
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.timer = None
        transport = self.transport
        self.close()
        if transport is not None:
            transport.abort()


def send_mirror(
    ctx: ListenerContext, cluster: Cluster, payload: bytes, method: bytes, timeout: float
) -> None:
    """Send ``payload`` (a whole request) to an endpoint of ``cluster``."""
    loop = ctx.loop
    endpoint = cluster.pick(None, loop.time())
    if endpoint is None:
        return
    cluster.request_started(endpoint)
    mirror = MirrorExchange(cluster, endpoint, payload, method)
    future = asyncio.ensure_future(
        open_to(
            cluster.service.name,
            ctx.mtls,
            lambda: mirror,
            endpoint.address,
            endpoint.port,
            ctx.connect_timeout,
        )
    )

    def connected(fut: asyncio.Future[tuple[asyncio.Transport, MirrorExchange]]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            mirror.close()
        elif mirror.cluster is None:  # timed out while connecting
            fut.result()[0].close()

    future.add_done_callback(connected)

    def give_up() -> None:
        mirror.abort()
        with contextlib.suppress(Exception):
            future.cancel()

    mirror.timer = loop.call_later(ctx.connect_timeout + timeout, give_up)
