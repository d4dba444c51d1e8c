"""The downstream HTTP/1.1 protocol: one instance per client connection.

How it works: bytes accumulate until ``parse_request_head`` finds a head; the
resolver picks a target (or a local reply); the rewritten head and whatever
body is at hand leave in one write on a pooled or fresh upstream connection;
the rest of the body streams through with backpressure.  The upstream side
relays the response and calls ``response_done``.  Only one exchange is in
flight: pipelined requests wait in the buffer (reading pauses when it grows)
and are parsed once the current response is complete, so responses stay in
order.  After any framing error the connection closes: nothing that follows
an unparseable message can be trusted not to be a smuggled request.

``Expect: 100-continue`` is forwarded and the upstream's 100 relayed; an
endpoint that has answered in HTTP/1.0 (which knows no 100) gets no chance:
the proxy answers 100 itself.  The first request to an unknown HTTP/1.0
endpoint waits for the client to give up waiting (curl: 1 s).

Callback style throughout (no task per request): timers are ``call_later``
handles, idle timers re-armed lazily.

It must not parse responses (``upstream``) or choose endpoints (``resolve``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from meshproxy import fastpath as fp
from meshproxy.http1.context import ListenerContext
from meshproxy.http1.head import build_request_head, origin_form
from meshproxy.http1.replies import CONTINUE, local_reply
from meshproxy.http1.upstream import PendingConnect, UpstreamConnection
from meshproxy.resolve import LocalReply, Target

log = logging.getLogger("meshproxy")

# Connection states.
IDLE = 0  # waiting for (the rest of) a request head
BODY = 1  # request head sent upstream, body still streaming from the client
WAIT = 2  # request complete, response in progress
TUNNEL = 3  # after a 101: raw bytes both ways
CLOSED = 4

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
# Pipelined bytes buffered while a response is in flight before we stop reading.
HIGH_WATER = 65536


class HttpServer(asyncio.Protocol):
    __slots__ = (
        "awaiting_head",
        "buf",
        "client_eof",
        "client_ip",
        "client_keep_alive",
        "client_version",
        "close_after",
        "connecting",
        "ctx",
        "decoder",
        "expect_continue",
        "head_sent",
        "head_timer",
        "idle_since",
        "idle_timer",
        "method",
        "paused_buffer",
        "paused_upstream",
        "peer",
        "pending",
        "req_deadline",
        "req_remaining",
        "req_timer",
        "request_done",
        "retried",
        "sent",
        "started",
        "started_fresh",
        "state",
        "status",
        "target",
        "transport",
        "up",
        "upgrade_requested",
        "write_paused",
    )

    def __init__(self, ctx: ListenerContext) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.client_ip = b""
        self.client_eof = False  # tunnels only: the client half-closed
        self.buf = bytearray()
        self.state = IDLE
        self.up: UpstreamConnection | None = None
        self.target: Target | None = None
        self.method = b"GET"
        self.client_version = 11
        self.client_keep_alive = True
        self.upgrade_requested = False
        self.expect_continue = False
        self.close_after = False
        self.head_sent = False
        self.request_done = True
        self.req_remaining = 0
        self.decoder: fp.ChunkedDecoder | None = None
        self.pending: list[bytes] | None = None
        self.sent: bytes | None = None  # the whole request, kept for one retry
        self.retried = False
        self.status = 0
        self.started = 0.0
        self.started_fresh = False  # ``started`` is still "now" for the request timer
        self.awaiting_head = False
        self.req_deadline = 0.0
        self.connecting: PendingConnect | None = None
        self.req_timer: asyncio.TimerHandle | None = None
        self.head_timer: asyncio.TimerHandle | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.idle_since = 0.0
        self.write_paused = False
        self.paused_upstream = False
        self.paused_buffer = False

    # -- asyncio callbacks -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = (str(peer[0]), int(peer[1]))
            self.client_ip = self.peer[0].encode()
        ctx = self.ctx
        ctx.connections.add(self)
        ctx.metrics.connection_opened(ctx.name)
        if ctx.draining:
            transport.close()
            return
        self.arm_idle(ctx.loop.time())

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == IDLE:
            if self.buf:
                self.buf += data
                self.read_heads(self.buf)
            else:
                self.read_heads(data)
        elif state == BODY:
            self.relay_body(data)
        elif state == WAIT:
            self.buf += data
            if len(self.buf) > HIGH_WATER and not self.paused_buffer:
                self.paused_buffer = True
                self.update_reading()
        elif state == TUNNEL:
            up = self.up
            assert up is not None and up.transport is not None
            up.transport.write(data)

    def eof_received(self) -> bool | None:
        up = self.up
        if self.state == TUNNEL:
            self.client_eof = True
            if up is None or up.transport is None or up.eof or not up.transport.can_write_eof():
                return False  # both directions are done: close both
            up.transport.write_eof()
            return True
        # A half-closed client still gets its response; we close after it.
        self.close_after = True
        return self.state == WAIT

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        ctx = self.ctx
        ctx.connections.discard(self)
        ctx.metrics.connection_closed(ctx.name)
        self.cancel_timers()
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        up = self.up
        self.up = None
        if up is not None:
            up.close()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.up is not None:
            self.up.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.up is not None:
            self.up.resume_reading()

    # -- requests ----------------------------------------------------------

    def read_heads(self, src: bytes | bytearray) -> None:
        """Parse and dispatch heads from ``src`` until one starts an exchange."""
        ctx = self.ctx
        while True:
            try:
                got = fp.parse_request_head(src, 0, ctx.max_head, ctx.max_headers)
            except fp.ParseError as exc:
                self.refuse(exc.status, exc.reason)
                return
            except Exception:  # a parser bug costs this connection, not more
                log.exception("parser failure listener=%s", ctx.name)
                self.refuse(400, "bad request")
                return
            if got is None:
                if src is not self.buf:
                    self.buf = bytearray(src)
                if self.buf and self.head_timer is None:
                    self.head_timer = ctx.loop.call_later(
                        ctx.request_head_timeout, self.head_timeout
                    )
                return
            head, end = got
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None
            if end == len(src):
                raw = src if type(src) is bytes else bytes(src)
                self.buf = bytearray()
            else:
                raw = bytes(src[:end])
                rest = src[end:]
                self.buf = rest if type(rest) is bytearray else bytearray(rest)
            if self.dispatch(head, raw) or self.state != IDLE:
                return
            src = self.buf
            if not src:
                self.arm_idle(ctx.loop.time())
                return

    def dispatch(self, head: fp.RequestHead, raw: bytes) -> bool:
        """Start an exchange for ``head``; True when the caller must stop reading
        heads (an exchange started or the connection closes)."""
        ctx = self.ctx
        if head.method == b"CONNECT":
            self.refuse(501, "CONNECT not supported")
            return True
        target_bytes = head.target
        if target_bytes[:1] == b"/":
            authority, path = None, target_bytes
        else:
            authority, path = origin_form(target_bytes)
        target = ctx.resolver.resolve(ctx.name, head, authority or head.host, self.peer)
        if isinstance(target, LocalReply):
            close = head.body != fp.BODY_NONE or not head.keep_alive or ctx.draining
            assert self.transport is not None
            self.transport.write(
                local_reply(target.status, target.reason, close, head.method == b"HEAD")
            )
            ctx.metrics.request_done(ctx.name, "unknown", target.status, 0.0)
            if close:
                self.close()
            return close
        self.target = target
        self.started = ctx.loop.time()
        self.started_fresh = True
        self.method = head.method
        self.client_version = head.version
        self.client_keep_alive = head.keep_alive
        self.upgrade_requested = head.upgrade is not None
        self.expect_continue = head.expect_continue and head.version == 11
        self.close_after = not head.keep_alive or ctx.draining
        self.head_sent = False
        self.status = 0
        self.retried = False
        payload = build_request_head(head, path, self.client_ip, authority, raw)
        framing = head.body
        buf = self.buf
        if framing == fp.BODY_NONE:
            done = True
        elif framing == fp.BODY_LENGTH:
            length = head.content_length
            n = len(buf)
            if n:
                if n <= length:
                    payload += buf
                    self.buf = bytearray()
                else:
                    payload += buf[:length]
                    del buf[:length]
                    n = length
            self.req_remaining = length - n
            done = self.req_remaining == 0
        else:
            decoder = self.decoder = fp.ChunkedDecoder()
            if buf:
                chunk = bytes(buf)
                try:
                    _pieces, consumed = decoder.feed(chunk)
                except fp.ParseError as exc:
                    self.refuse(exc.status, exc.reason)
                    return True
                payload += chunk[:consumed]
                del buf[:consumed]
            done = decoder.done
        self.request_done = done
        self.state = WAIT if done else BODY
        self.sent = payload if done and head.method in IDEMPOTENT else None
        if self.expect_continue and target.key in ctx.http10_endpoints:
            # An HTTP/1.0 upstream never sends 100: we answer it ourselves.
            assert self.transport is not None
            self.transport.write(CONTINUE)
            self.expect_continue = False
        up = ctx.pool.take(target.key)
        if up is not None:
            self.attach(up, payload)
        else:
            self.connect(payload)
        return True

    def relay_body(self, data: bytes) -> None:
        if self.decoder is None:
            remaining = self.req_remaining
            n = len(data)
            if n <= remaining:
                self.req_remaining = remaining - n
                self.send_up(data)
            else:
                self.req_remaining = 0
                self.send_up(data[:remaining])
                self.buf += data[remaining:]
            if self.req_remaining == 0:
                self.body_complete()
            return
        try:
            _pieces, consumed = self.decoder.feed(data)
        except fp.ParseError as exc:
            self.refuse(exc.status, exc.reason)
            return
        self.send_up(data if consumed == len(data) else data[:consumed])
        if self.decoder.done:
            self.decoder = None
            if consumed < len(data):
                self.buf += data[consumed:]
            self.body_complete()

    def send_up(self, data: bytes) -> None:
        up = self.up
        if up is not None:
            assert up.transport is not None
            up.transport.write(data)
        elif self.pending is not None:
            # Still connecting: hold a little, then stop reading the client.
            self.pending.append(data)
            if not self.paused_upstream and sum(map(len, self.pending)) > HIGH_WATER:
                self.pause_for_upstream()

    def body_complete(self) -> None:
        self.request_done = True
        if self.state == BODY:
            self.state = WAIT
            if self.up is not None and not self.head_sent:
                self.started_fresh = False  # the wait starts now, not at the head
                self.arm_request_timer()

    # -- upstream connection -----------------------------------------------

    def connect(self, payload: bytes) -> None:
        target = self.target
        assert target is not None
        self.pending = [payload]
        self.connecting = PendingConnect(self.ctx, target.host, target.port, self.connected)

    def connected(self, up: UpstreamConnection | None, failure: str) -> None:
        self.connecting = None
        if up is None:
            self.fail(503, failure)
            return
        pending = self.pending or []
        self.pending = None
        self.attach(up, b"".join(pending))

    def attach(self, up: UpstreamConnection, payload: bytes) -> None:
        self.up = up
        up.start(self, self.method, payload)
        if self.paused_upstream:
            self.paused_upstream = False
            self.update_reading()
        if self.request_done:
            self.arm_request_timer()

    def arm_request_timer(self) -> None:
        """Start waiting for the response head.  The timer is re-armed lazily:
        most requests finish long before it fires, and then it only moves on."""
        target = self.target
        assert target is not None
        timeout = target.timeout if target.timeout is not None else self.ctx.request_timeout
        loop = self.ctx.loop
        now = self.started if self.started_fresh else loop.time()
        self.started_fresh = False
        deadline = now + timeout
        self.req_deadline = deadline
        self.awaiting_head = True
        timer = self.req_timer
        if timer is None:
            self.req_timer = loop.call_at(deadline, self.request_timer_fired)
        elif timer.when() > deadline:
            timer.cancel()
            self.req_timer = loop.call_at(deadline, self.request_timer_fired)

    def request_timer_fired(self) -> None:
        self.req_timer = None
        if not self.awaiting_head:
            return
        loop = self.ctx.loop
        if self.req_deadline - loop.time() > 0.001:
            self.req_timer = loop.call_at(self.req_deadline, self.request_timer_fired)
            return
        self.request_timeout()

    def request_timeout(self) -> None:
        self.awaiting_head = False
        up = self.up
        self.up = None
        if up is not None:
            up.abort()
        self.fail(504, "upstream response timeout")

    # -- called by the upstream connection ---------------------------------

    def expects_continue(self) -> bool:
        expect = self.expect_continue
        self.expect_continue = False
        return expect

    def close_after_response(self, body: int) -> bool:
        """Decide, as the response head leaves, whether the client connection
        closes after this response."""
        self.head_sent = True
        if (
            not self.request_done
            or body == fp.BODY_UNTIL_CLOSE
            or (body == fp.BODY_CHUNKED and self.client_version == 10)
            or self.ctx.draining
        ):
            self.close_after = True
        return self.close_after

    def tunnel_started(self) -> None:
        self.state = TUNNEL
        self.request_done = True
        if self.buf:
            data = bytes(self.buf)
            self.buf = bytearray()
            self.send_up(data)
        self.close_after = True

    def response_done(self, close: bool) -> None:
        ctx = self.ctx
        target = self.target
        now = ctx.loop.time()
        ctx.metrics.request_done(
            ctx.name, target.service if target is not None else "unknown", self.status,
            now - self.started,
        )  # fmt: skip
        self.up = None
        self.sent = None
        self.head_sent = False
        if close or self.close_after or self.state == CLOSED:
            self.close()
            return
        self.state = IDLE
        if self.paused_buffer or self.paused_upstream:
            self.paused_buffer = self.paused_upstream = False
            self.update_reading()
        if self.buf:
            self.read_heads(self.buf)
        else:
            self.idle_since = now  # arm_idle, inlined: this runs once per request
            if self.idle_timer is None:
                self.idle_timer = ctx.loop.call_later(ctx.idle_timeout, self.idle_check)

    def upstream_failed(self, up: UpstreamConnection, retryable: bool) -> None:
        """``up`` closed before any response byte."""
        if self.up is up:
            self.up = None
        if retryable and self.sent is not None and not self.retried:
            self.retried = True
            self.awaiting_head = False
            self.connect(self.sent)
            return
        self.fail(502, "upstream reset before response")

    def upstream_bad_response(self) -> None:
        self.up = None
        if self.head_sent:
            self.abort_exchange()
        else:
            self.fail(502, "bad upstream response")

    def abort_exchange(self) -> None:
        """The exchange broke after the response began: the client can only
        learn it from the connection closing."""
        self.up = None
        self.status = self.status or 502
        self.response_done(close=True)

    def pause_for_upstream(self) -> None:
        self.paused_upstream = True
        self.update_reading()

    def resume_for_upstream(self) -> None:
        self.paused_upstream = False
        self.update_reading()

    # -- endings -----------------------------------------------------------

    def fail(self, status: int, reason: str) -> None:
        """Answer the current exchange locally (no response byte sent yet)."""
        if self.state == CLOSED:
            return
        self.awaiting_head = False
        up = self.up
        self.up = None
        if up is not None:
            up.close()
        if self.head_sent:
            self.abort_exchange()
            return
        if not self.request_done:
            self.close_after = True
        self.status = status
        assert self.transport is not None
        close = self.close_after or self.ctx.draining
        self.transport.write(local_reply(status, reason, close, self.method == b"HEAD"))
        self.response_done(close=False)

    def refuse(self, status: int, reason: str) -> None:
        """A request we cannot frame: answer if we still may, then close."""
        self.ctx.metrics.request_done(self.ctx.name, "unknown", status, 0.0)
        if self.transport is not None and not self.head_sent:
            self.transport.write(local_reply(status, reason, True))
        self.close()

    def head_timeout(self) -> None:
        self.head_timer = None
        if self.state == IDLE and self.buf:
            self.refuse(408, "request head timeout")
        elif self.state == IDLE:
            self.close()

    def arm_idle(self, now: float) -> None:
        self.idle_since = now
        if self.idle_timer is None:
            self.idle_timer = self.ctx.loop.call_later(self.ctx.idle_timeout, self.idle_check)

    def idle_check(self) -> None:
        self.idle_timer = None
        if self.state != IDLE or self.buf:
            return
        left = self.idle_since + self.ctx.idle_timeout - self.ctx.loop.time()
        if left > 0.01:
            self.idle_timer = self.ctx.loop.call_later(left, self.idle_check)
        else:
            self.close()

    def update_reading(self) -> None:
        transport = self.transport
        if transport is None or self.state == CLOSED:
            return
        if self.paused_buffer or self.paused_upstream:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def cancel_timers(self) -> None:
        for timer in (self.req_timer, self.head_timer, self.idle_timer):
            if timer is not None:
                timer.cancel()
        self.req_timer = self.head_timer = self.idle_timer = None

    def close(self) -> None:
        if self.state != CLOSED:
            self.state = CLOSED
            self.cancel_timers()
            if self.connecting is not None:
                self.connecting.cancel()
                self.connecting = None
            up = self.up
            self.up = None
            if up is not None:
                up.close()
            if self.transport is not None:
                self.transport.close()

    def drain(self) -> None:
        if self.state == IDLE and not self.buf:
            self.close()
        else:
            self.close_after = True

    def is_idle(self) -> bool:
        return self.state == IDLE and not self.buf
