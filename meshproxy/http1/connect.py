"""Opening a connection to an upstream endpoint, plaintext or mesh mTLS, under
a connect timeout; the connection, once open, is an ``UpstreamConnection``.

It must not write requests (``forward`` does) nor keep connections (``pool``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from meshproxy.http1.upstream import UpstreamConnection
from meshproxy.security.handshake import connect_mtls
from meshproxy.security.refusals import TLSRefused
from meshproxy.security.spiffe import SpiffeId

if TYPE_CHECKING:
    from meshproxy.http1.context import ListenerContext

__all__ = ["PendingConnect"]


class PendingConnect:
    """A connection being opened to an endpoint, with its connect timeout.

    ``expected`` set: mTLS with the contexts current now, and the server must
    present that SPIFFE ID (a refusal is a connect failure whose reason says
    why).  ``done(conn, "")`` on success, ``done(None, reason)`` on failure or
    timeout; never after ``cancel()`` (a connection that completes anyway is
    closed)."""

    __slots__ = ("done", "future", "timer")

    def __init__(
        self,
        ctx: ListenerContext,
        host: str,
        port: int,
        done: Callable[[UpstreamConnection | None, str], None],
        expected: SpiffeId | None = None,
    ) -> None:
        self.done: Callable[[UpstreamConnection | None, str], None] | None = done
        key = (host, port, expected)
        mtls = ctx.mtls
        if expected is None or mtls is None:
            self.future: asyncio.Future[tuple[asyncio.BaseTransport, asyncio.Protocol]] = (
                asyncio.ensure_future(
                    ctx.loop.create_connection(lambda: UpstreamConnection(ctx, key), host, port)
                )
            )
        else:
            self.future = asyncio.ensure_future(
                connect_mtls(
                    lambda: UpstreamConnection(ctx, key),
                    host,
                    port,
                    mtls.contexts,
                    expected,
                    mtls.refusals,
                    handshake_timeout=ctx.connect_timeout,
                )
            )
        self.future.add_done_callback(self.finished)
        self.timer: asyncio.TimerHandle | None = ctx.loop.call_later(
            ctx.connect_timeout, self.timed_out
        )

    def finished(self, fut: asyncio.Future[tuple[asyncio.BaseTransport, asyncio.Protocol]]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        done = self.done
        self.done = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if done is None:
            if exc is None:
                cast(UpstreamConnection, fut.result()[1]).close()  # nobody waits for it any more
            return
        if exc is None:
            done(cast(UpstreamConnection, fut.result()[1]), "")
        elif isinstance(exc, TLSRefused):
            done(None, f"upstream TLS refused: {exc.reason}")
        elif isinstance(exc, ConnectionRefusedError):
            done(None, "upstream connection refused")
        else:
            done(None, "upstream connect failed")

    def timed_out(self) -> None:
        self.timer = None
        done = self.done
        self.cancel()
        if done is not None:
            done(None, "upstream connect timeout")

    def cancel(self) -> None:
        self.done = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.future.cancel()
