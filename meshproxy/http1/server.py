"""The downstream HTTP/1.1 protocol: one instance per client connection.

How it works: bytes accumulate until ``parse_request_head`` finds a head; the
resolver picks a route (or a local reply); the observer sees the exchange
start; the rewritten head (header edits, rewrites, the observer's fields) and
whatever body is at hand leave in one write on a pooled or fresh upstream
connection (``forward``: endpoint, retries, timeouts, faults); the rest of
the body streams through with backpressure.  A mirrored request leaves on its
own connection (``mirror``) only when it is complete at once and at most
``REPLAY_LIMIT`` bytes: a copy of a streamed body is never made.  The upstream side
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

It must not parse responses (``upstream``), choose routes (``resolve``) or
endpoints (``forward`` asks the route's cluster).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import cast

from meshproxy import fastpath as fp
from meshproxy.http1.context import ListenerContext
from meshproxy.http1.forward import (
    BODY,
    CLOSED,
    HIGH_WATER,
    IDEMPOTENT,
    IDLE,
    REPLAY_LIMIT,
    TUNNEL,
    WAIT,
    Forwarder,
)
from meshproxy.http1.head import (
    build_request_head,
    edited_request_head,
    new_request_id,
    origin_form,
)
from meshproxy.http1.policy import ListenerPolicy, run_request_phase
from meshproxy.http1.replies import local_reply
from meshproxy.observe.exchange import BAD_REQUEST, DOWNSTREAM_TERMINATED, Exchange
from meshproxy.policy import LocalReply as PolicyReply
from meshproxy.policy import RequestContext
from meshproxy.resolve import LocalReply

log = logging.getLogger("meshproxy")
_rand = random.random

__all__ = ["BODY", "CLOSED", "IDLE", "TUNNEL", "WAIT", "HttpServer"]


class HttpServer(Forwarder):
    __slots__ = (
        "buf",
        "client_addr",
        "client_eof",
        "client_ip",
        "client_keep_alive",
        "client_version",
        "decoder",
        "dispatching",
        "head_timer",
        "idle_since",
        "idle_timer",
        "paused_buffer",
        "peer",
        "policy",
        "policy_rc",
        "policy_task",
        "principal",
        "req_remaining",
        "upgrade_requested",
    )

    def __init__(self, ctx: ListenerContext) -> None:
        super().__init__(ctx)
        self.peer: tuple[str, int] = ("", 0)
        # The verified mTLS peer's SPIFFE ID (``str(SpiffeId)``), set by the
        # inbound listener before the first byte; None for plaintext.
        self.principal: str | None = None
        self.client_ip = b""
        self.client_addr = ""
        self.client_eof = False  # tunnels only: the client half-closed
        self.buf = bytearray()
        self.client_version = 11
        self.client_keep_alive = True
        self.upgrade_requested = False
        self.req_remaining = 0
        self.decoder: fp.ChunkedDecoder | None = None
        self.dispatching = False  # inside dispatch: the caller reads the next head
        self.head_timer: asyncio.TimerHandle | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.idle_since = 0.0
        self.paused_buffer = False
        # The policy chain of the exchange in flight (``http1.policy``), if any.
        self.policy: ListenerPolicy | None = None
        self.policy_rc: RequestContext | None = None
        self.policy_task: asyncio.Task[PolicyReply | None] | None = None

    # -- asyncio callbacks -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = (str(peer[0]), int(peer[1]))
            self.client_addr = self.peer[0]
            self.client_ip = self.client_addr.encode()
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
        ctx = self.ctx
        ctx.connections.discard(self)
        ctx.metrics.connection_closed(ctx.name)
        self.abandon()
        self.state = CLOSED
        self.cancel_timers()
        self.drop_connecting()
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
                if type(src) is bytes:
                    raw = src  # straight from data_received: the buffer is empty
                else:
                    raw = bytes(src)
                    self.buf = bytearray()
            else:
                raw = bytes(src[:end])
                rest = src[end:]
                self.buf = rest if type(rest) is bytearray else bytearray(rest)
            self.dispatching = True
            try:
                self.dispatch(head, raw)
            finally:
                self.dispatching = False
            if self.state != IDLE:
                return
            src = self.buf
            if not src:
                self.arm_idle(ctx.loop.time())
                return

    def dispatch(self, head: fp.RequestHead, raw: bytes) -> None:
        """Start an exchange for ``head`` (or answer it locally)."""
        ctx = self.ctx
        if head.method == b"CONNECT":
            self.refuse(501, "CONNECT not supported")
            return
        target_bytes = head.target
        if target_bytes[:1] == b"/":
            authority, path = None, target_bytes
        else:
            authority, path = origin_form(target_bytes)
        host = authority or head.host
        now = ctx.loop.time()
        ex = Exchange(ctx.name, ctx.direction, ctx.source_service)
        ex.start = now
        ex.start_wall = now + ctx.wall_offset
        ex.method = head.method
        ex.authority = host or b""
        ex.path = path
        rid = fp.header_value(head.headers, b"x-request-id") or new_request_id()
        ex.request_id = rid
        policy = ctx.policy
        if policy is not None:
            run_request_phase(self, policy, head, raw, ex, path, authority, host, rid, now)
            return
        self.route_request(head, raw, ex, path, authority, host, rid, now, None)

    def route_request(
        self,
        head: fp.RequestHead,
        raw: bytes | None,
        ex: Exchange,
        path: bytes,
        authority: bytes | None,
        host: bytes | None,
        rid: bytes,
        now: float,
        rc: RequestContext | None,
    ) -> None:
        """Go on with a request the policy chain (if any) let through."""
        ctx = self.ctx
        route = ctx.resolver.resolve(ctx.name, head, host, self.client_addr, path)
        if isinstance(route, LocalReply):
            ctx.observer.exchange_started(ex, head.headers)
            self.local_answer(head, ex, route)
            return
        ex.destination_service = route.service
        ex.destination_subset = route.subset
        ex.route = route.name
        extra = ctx.observer.exchange_started(ex, head.headers)
        self.policy_rc = rc  # with ``policy``, set by the request phase
        if rc is not None:
            if rc.request_extra:
                extra = [*extra, *rc.request_extra]
            if path is not head.target:
                raw = None  # the path was normalised: the head is rebuilt
        self.exchange = ex
        self.route = route
        self.started = now
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
        self.retries = 0
        self.route_deadline = 0.0
        policy = self.retry_policy = route.retry
        self.tried = [] if policy is not None else None
        self.response_edit = route.response_headers
        self.balance_key = (
            route.balance_key(head.headers, self.client_addr) if route.hashed else None
        )
        mirror_head: bytes | None = None
        if route.plain:
            payload = build_request_head(
                head, path, self.client_ip, authority, raw, rid, None, extra or None
            )
        else:
            payload, mirror_head = edited_request_head(
                head, route, path, self.client_ip, authority, rid, extra
            )
        head_size = len(payload)
        framing = head.body
        buf = self.buf
        if framing == fp.BODY_NONE:
            done = True
        elif framing == fp.BODY_LENGTH:
            length = ex.bytes_in = head.content_length
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
                    return
                payload += chunk[:consumed]
                ex.bytes_in = consumed
                del buf[:consumed]
            done = decoder.done
        self.request_done = done
        self.state = WAIT if done else BODY
        self.replay = None
        if done:
            self.sent = payload if policy is not None or head.method in IDEMPOTENT else None
        else:
            self.sent = None
            body_size = len(payload) - head_size
            if policy is not None and body_size <= REPLAY_LIMIT:
                self.replay = [payload]
                self.replay_size = body_size
        if route.plain:
            self.start_try(payload, now)
            return
        mirrored = None
        if (
            mirror_head is not None
            and done
            and len(payload) - head_size <= REPLAY_LIMIT
            and route.mirror_cluster is not None
        ):
            mirrored = mirror_head + payload[head_size:]
        self.start_ruled(route, payload, head.method, mirrored)

    def local_answer(self, head: fp.RequestHead, ex: Exchange, reply: LocalReply) -> None:
        """Answer a request the resolver refused; the exchange ends here."""
        close = head.body != fp.BODY_NONE or not head.keep_alive or self.ctx.draining
        ex.add_flag(reply.flag)
        data = local_reply(reply.status, reply.reason, close, head.method == b"HEAD")
        self.local_answer_bytes(ex, reply.status, data, close)

    def local_answer_bytes(self, ex: Exchange, status: int, data: bytes, close: bool) -> None:
        ctx = self.ctx
        assert self.transport is not None
        self.transport.write(data)
        ex.status = status
        ex.duration = ctx.loop.time() - ex.start
        ctx.observer.exchange_done(ex)
        if close:
            self.close()

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
        if self.exchange is not None:
            self.exchange.bytes_in += consumed
        self.send_up(data if consumed == len(data) else data[:consumed])
        if self.decoder.done:
            self.decoder = None
            if consumed < len(data):
                self.buf += data[consumed:]
            self.body_complete()

    def send_up(self, data: bytes) -> None:
        replay = self.replay
        if replay is not None:
            size = self.replay_size + len(data)
            if size > REPLAY_LIMIT:
                self.replay = None  # too long to keep: this request is not retried
            else:
                replay.append(data)
                self.replay_size = size
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
        if self.replay is not None:
            self.sent = b"".join(self.replay)
            self.replay = None
        if self.state == BODY:
            self.state = WAIT
            if self.up is not None and not self.head_sent:
                self.started_fresh = False  # the wait starts now, not at the head
                self.arm_request_timer()

    # -- called by the upstream connection ---------------------------------

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
        now = ctx.loop.time()
        self.finish_exchange(now)
        self.up = None
        self.sent = None
        self.replay = None
        self.route = None
        self.head_sent = False
        if close or self.close_after or self.state == CLOSED:
            self.close()
            return
        self.state = IDLE
        if self.paused_buffer or self.paused_upstream:
            self.paused_buffer = self.paused_upstream = False
            self.update_reading()
        if self.dispatching:
            return  # read_heads, our caller, goes on with the buffer
        if self.buf:
            self.read_heads(self.buf)
        else:
            self.idle_since = now  # arm_idle, inlined: this runs once per request
            if self.idle_timer is None:
                self.idle_timer = ctx.loop.call_later(ctx.idle_timeout, self.idle_check)

    # -- endings -----------------------------------------------------------

    def abandon(self) -> None:
        """The client connection ends with an exchange in flight."""
        if self.exchange is None:
            return
        if self.wait_timer is not None:
            self.wait_timer.cancel()
            self.wait_timer = None
        if not self.status:
            self.exchange.add_flag(DOWNSTREAM_TERMINATED)
        self.end_try(None)
        self.finish_exchange(self.ctx.loop.time())

    def refuse(self, status: int, reason: str) -> None:
        """A request we cannot frame: answer if we still may, then close."""
        ctx = self.ctx
        self.end_try(None)
        ex = self.exchange
        if ex is None:
            ex = Exchange(ctx.name, ctx.direction, ctx.source_service)
            ex.start = ctx.loop.time()
            ex.start_wall = time.time()
            ex.add_flag(BAD_REQUEST)
            ex.status = status
            ctx.observer.exchange_done(ex)
        else:
            ex.add_flag(BAD_REQUEST)
            if not self.head_sent:
                self.status = status
            self.finish_exchange(ctx.loop.time())
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
        if self.policy_task is not None:
            self.policy_task.cancel()  # the client is gone: the request phase stops
            self.policy_task = None
        for timer in (self.req_timer, self.head_timer, self.idle_timer, self.wait_timer):
            if timer is not None:
                timer.cancel()
        self.req_timer = self.head_timer = self.idle_timer = self.wait_timer = None

    def close(self) -> None:
        if self.state != CLOSED:
            self.abandon()
            self.state = CLOSED
            self.cancel_timers()
            self.drop_connecting()
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
