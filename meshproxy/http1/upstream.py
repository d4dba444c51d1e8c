"""One keep-alive connection to an upstream endpoint, and the response relay.

While busy, the connection belongs to one downstream ``HttpServer`` (``down``)
and relays the response to it: the head is parsed (framing, hop-by-hop
removal, metrics) and rewritten only when needed; body bytes go through
untouched (Content-Length, and chunked to HTTP/1.1 clients, where the decoder
is run only to find the end of the message), decoded for HTTP/1.0 clients.
After a 101 it becomes a raw tunnel.  When the response ends and both sides
allow it, the connection parks itself in the listener's pool.

Backpressure: a slow client pauses our reading (``server.pause_writing``), a
slow upstream pauses the client's reading (``pause_writing`` here).

It must not decide where requests go nor answer clients itself: failures are
reported to ``down``, which owns the exchange.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, cast

from meshproxy import fastpath as fp
from meshproxy.http1.head import build_response_head, has_hop_by_hop, idle_deadline
from meshproxy.http1.policy import finished_headers, response_headers, with_status
from meshproxy.http1.replies import CONTINUE
from meshproxy.security.spiffe import SpiffeId

if TYPE_CHECKING:
    from meshproxy.http1.context import ListenerContext
    from meshproxy.http1.server import HttpServer
    from meshproxy.policy import LocalReply
    from meshproxy.upstream import Cluster, EndpointState

# (host, port, the SPIFFE ID verified on the connection or None for plaintext):
# the pool never hands a plain connection to a TLS try, nor one verified for
# another identity.
UpstreamKey = tuple[str, int, SpiffeId | None]

# Connection states.
IDLE = 0  # parked in the pool (or just connected)
HEAD = 1  # request sent, waiting for the response head
LENGTH = 2  # relaying a Content-Length body
CHUNKED = 3  # relaying a chunked body
UNTIL_CLOSE = 4  # relaying a body that ends when the upstream closes
TUNNEL = 5  # after a 101: raw bytes both ways
CLOSED = 6
HELD = 7  # head parsed, an asynchronous response phase of the policy chain runs


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "buf",
        "cluster",
        "ctx",
        "decode",
        "decoder",
        "down",
        "endpoint",
        "eof",
        "got_bytes",
        "held",
        "idle_after",
        "idle_timer",
        "keep",
        "key",
        "method",
        "parked_at",
        "reading_paused",
        "remaining",
        "reused",
        "state",
        "transport",
        "version",
    )

    def __init__(self, ctx: ListenerContext, key: UpstreamKey) -> None:
        self.ctx = ctx
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.down: HttpServer | None = None
        self.buf = bytearray()
        self.state = IDLE
        self.method = b"GET"
        self.remaining = 0
        self.decoder: fp.ChunkedDecoder | None = None
        self.decode = False  # decode chunked for an HTTP/1.0 client
        self.reused = False  # has finished at least one exchange
        self.got_bytes = False  # any byte of the current response seen
        self.keep = True  # may go back to the pool after this response
        self.version = 11  # the upstream's HTTP version, once it answered
        self.idle_after = ctx.upstream_idle
        self.idle_timer: asyncio.TimerHandle | None = None
        self.parked_at = 0.0
        self.reading_paused = False
        self.eof = False  # tunnels only: the upstream half-closed
        self.held: asyncio.Task[LocalReply | None] | None = None  # the response phase, HELD
        # Set once the connection counts against its cluster's breaker and
        # the endpoint's connection gauge; released when it closes.
        self.cluster: Cluster | None = None
        self.endpoint: EndpointState | None = None

    # -- asyncio callbacks -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == LENGTH:
            down = self.down
            assert down is not None and down.transport is not None
            n = len(data)
            remaining = self.remaining
            if n < remaining:
                self.remaining = remaining - n
                down.transport.write(data)
                return
            down.transport.write(data if n == remaining else data[:remaining])
            if n > remaining:
                self.keep = False  # bytes past the message: never reuse
            self.finish()
        elif state == HEAD:
            self.got_bytes = True
            if self.buf:
                self.buf += data
                self.parse_head(self.buf)
            else:
                self.parse_head(data)
        elif state == CHUNKED:
            self.relay_chunked(data)
        elif state in (UNTIL_CLOSE, TUNNEL):
            down = self.down
            assert down is not None and down.transport is not None
            down.transport.write(data)
            if down.exchange is not None:
                down.exchange.bytes_out += len(data)
        elif state == IDLE:
            # An idle upstream must not speak; whatever it says, it is unusable.
            self.close()
        elif state == HELD:
            self.buf += data  # reading is paused: at most what was already in flight

    def eof_received(self) -> bool | None:
        down = self.down
        if self.state == TUNNEL:
            self.eof = True
            if (
                down is None
                or down.transport is None
                or down.client_eof
                or not down.transport.can_write_eof()
            ):
                return False  # both directions are done: close both
            down.transport.write_eof()
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        state = self.state
        self.state = CLOSED
        self.release()
        self.drop_held()
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        down = self.down
        self.down = None
        if state in (IDLE, CLOSED):
            self.ctx.pool.discard(self.key, self)
            return
        if down is None:
            return
        if state == HEAD:
            down.upstream_failed(self, retryable=self.reused and not self.got_bytes)
        elif state == UNTIL_CLOSE:
            down.response_done(close=True)
        else:
            down.abort_exchange()

    def pause_writing(self) -> None:
        if self.down is not None:
            self.down.pause_for_upstream()

    def resume_writing(self) -> None:
        if self.down is not None:
            self.down.resume_for_upstream()

    # -- called by the downstream side -------------------------------------

    def start(self, down: HttpServer, method: bytes, payload: bytes) -> None:
        """Send a request (head and whatever body is at hand) for ``down``."""
        assert self.transport is not None
        self.down = down
        self.method = method
        self.state = HEAD
        self.got_bytes = False
        self.transport.write(payload)
        if down.write_paused:
            self.pause_reading()

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()

    def release(self) -> None:
        cluster = self.cluster
        if cluster is not None:
            self.cluster = None
            assert self.endpoint is not None
            cluster.connection_closed(self.endpoint)
            cluster.breakers.release_connection()

    def close(self) -> None:
        if self.state != CLOSED:
            self.down = None
            self.state = CLOSED
            self.release()
            self.drop_held()
            self.ctx.pool.discard(self.key, self)
            if self.idle_timer is not None:
                self.idle_timer.cancel()
                self.idle_timer = None
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        transport = self.transport
        self.close()
        if transport is not None:
            transport.abort()

    # -- response relay ----------------------------------------------------

    def parse_head(self, src: bytes | bytearray) -> None:
        down = self.down
        assert down is not None and down.transport is not None
        ctx = self.ctx
        start = 0
        while True:
            try:
                got = fp.parse_response_head(src, start, self.method, ctx.max_head, ctx.max_headers)
            except Exception:  # ParseError, or a parser bug: the same 502 either way
                self.close()
                down.upstream_bad_response()
                return
            if got is None:
                if start or src is not self.buf:
                    self.buf = bytearray(src[start:])
                return
            head, end = got
            if head.status >= 200 or head.status == 101:
                break
            # Interim answers (RFC 9110 section 15.2): a 100 goes on only when
            # the client asked for it; others (102, 103 Early Hints) go to an
            # HTTP/1.1 client without their hop-by-hop fields, never to an
            # HTTP/1.0 one, which knows no 1xx.
            if head.status == 100:
                if down.expects_continue():
                    down.transport.write(CONTINUE)
            elif down.client_version == 11:
                interim = build_response_head(
                    head, src[start:end], has_hop_by_hop(head), False, None, False
                )
                down.transport.write(interim)
            start = end
        if down.retry_policy is not None and down.retry_on_status(head.status):
            self.close()  # the try is retried: nothing of this answer is relayed
            return
        down.status = head.status
        down.awaiting_head = False
        if head.body == fp.BODY_TUNNEL and not down.upgrade_requested:
            self.close()
            down.upstream_bad_response()
            return
        self.version = head.version
        if head.version == 10:
            ctx.http10_endpoints.add(self.key)
        self.keep = head.keep_alive
        hop = has_hop_by_hop(head)
        if hop:
            announced = fp.keep_alive_timeout(head.headers)
            if announced is not None:
                self.idle_after = idle_deadline(ctx.upstream_idle, announced)
        body = head.body
        close = down.close_after_response(body)
        chunked_out = body == fp.BODY_CHUNKED and down.client_version == 11
        self.decode = body == fp.BODY_CHUNKED and not chunked_out
        if close:
            connection: bytes | None = b"close"
        elif down.client_version == 10:
            connection = b"keep-alive"
        else:
            connection = None
        edit = down.response_edit
        headers = edit.apply(head.headers) if edit is not None else None
        rc = down.policy_rc
        if rc is not None and down.policy is not None:
            policy = down.policy
            if policy.has_response_phase or rc.response_extra:
                hold = functools.partial(
                    self.hold, head, src, start, end, hop, chunked_out, connection
                )
                headers = response_headers(
                    rc,
                    policy.chain,
                    head.status,
                    head.headers if headers is None else headers,
                    hold,
                )
                if headers is None:
                    return
                if rc.status != head.status:
                    down.status = rc.status
        self.relay_head(head, src, start, end, hop, chunked_out, connection, headers)

    def hold(
        self,
        head: fp.ResponseHead,
        src: bytes | bytearray,
        start: int,
        end: int,
        hop: bool,
        chunked_out: bool,
        connection: bytes | None,
        task: asyncio.Task[LocalReply | None],
    ) -> None:
        """Keep the response (head and body) until the response phase is over."""
        self.state = HELD
        self.held = task
        self.buf = bytearray(src[start:])
        self.pause_reading()
        task.add_done_callback(
            functools.partial(self.release_held, head, end - start, hop, chunked_out, connection)
        )

    def release_held(
        self,
        head: fp.ResponseHead,
        end: int,
        hop: bool,
        chunked_out: bool,
        connection: bytes | None,
        task: asyncio.Task[LocalReply | None],
    ) -> None:
        if self.held is task:
            self.held = None
        down = self.down
        if task.cancelled() or self.state != HELD or down is None or down.policy_rc is None:
            return
        task.exception()  # the chain answers its own failures; nothing is left to raise
        rc = down.policy_rc
        if rc.status != head.status:
            down.status = rc.status
        src = bytes(self.buf)
        self.buf = bytearray()
        self.state = HEAD
        self.relay_head(head, src, 0, end, hop, chunked_out, connection, finished_headers(rc))
        if self.state not in (IDLE, CLOSED) and not down.write_paused:
            self.resume_reading()

    def drop_held(self) -> None:
        if self.held is not None:
            self.held.cancel()
            self.held = None

    def relay_head(
        self,
        head: fp.ResponseHead,
        src: bytes | bytearray,
        start: int,
        end: int,
        hop: bool,
        chunked_out: bool,
        connection: bytes | None,
        headers: list[tuple[bytes, bytes]] | None,
    ) -> None:
        """Send the response head (rebuilt when needed) and what body is at hand."""
        down = self.down
        assert down is not None and down.transport is not None
        body = head.body
        unchanged = (
            not hop
            and connection is None
            and not chunked_out
            and head.version == 11
            and headers is None
        )
        ex = down.exchange
        if ex is not None and body == fp.BODY_LENGTH:
            ex.bytes_out = head.content_length
        if (
            unchanged
            and body == fp.BODY_LENGTH
            and start == 0
            and type(src) is bytes
            and len(src) - end == head.content_length
        ):
            down.transport.write(src)  # the whole message, untouched: the common case
            self.finish()
            return
        raw = src[start:end]
        if unchanged:
            out = raw
        else:
            out = build_response_head(
                head,
                raw,
                hop,
                chunked_out,
                connection,
                body == fp.BODY_TUNNEL,
                headers,
            )
            if down.status != head.status:
                out = with_status(out, down.status)  # a response filter changed it
        rest = src[end:]
        if self.buf:
            self.buf = bytearray()
        if body == fp.BODY_LENGTH:
            length = head.content_length
            n = len(rest)
            if n >= length:
                down.transport.write(out + rest if n == length else out + rest[:length])
                if n > length:
                    self.keep = False
                self.finish()
                return
            down.transport.write(out + rest)
            self.remaining = length - n
            self.state = LENGTH
        elif body == fp.BODY_NONE:
            down.transport.write(out)
            if rest:
                self.keep = False
            self.finish()
        elif body == fp.BODY_CHUNKED:
            down.transport.write(out)
            self.decoder = fp.ChunkedDecoder(response=True)
            self.state = CHUNKED
            if rest:
                self.relay_chunked(bytes(rest))
        elif body == fp.BODY_UNTIL_CLOSE:
            self.keep = False
            self.state = UNTIL_CLOSE
            down.transport.write(out + rest)
        else:  # BODY_TUNNEL
            self.keep = False
            self.state = TUNNEL
            down.transport.write(out)
            down.tunnel_started()
            if rest and self.down is not None and self.down.transport is not None:
                self.down.transport.write(bytes(rest))

    def relay_chunked(self, data: bytes) -> None:
        down = self.down
        decoder = self.decoder
        assert down is not None and down.transport is not None and decoder is not None
        try:
            pieces, consumed = decoder.feed(data)
        except fp.ParseError:
            self.close()
            down.abort_exchange()
            return
        if down.exchange is not None:
            down.exchange.bytes_out += consumed
        if self.decode:
            if pieces:
                down.transport.write(b"".join(pieces))
        elif consumed == len(data):
            down.transport.write(data)
        else:
            down.transport.write(data[:consumed])
        if decoder.done:
            if consumed < len(data):
                self.keep = False
            self.decoder = None
            self.finish()

    def finish(self) -> None:
        """The response is complete: park or close, then tell ``down``."""
        down = self.down
        assert down is not None
        self.down = None
        self.state = IDLE
        if self.keep and down.request_done and not self.ctx.draining:
            self.park()
        else:
            self.close()
        down.response_done(close=False)

    def park(self) -> None:
        self.reused = True
        if self.reading_paused:
            self.resume_reading()
        if not self.ctx.pool.put(self.key, self):
            self.close()
            return
        loop = self.ctx.loop
        self.parked_at = loop.time()
        if self.idle_timer is None:
            self.idle_timer = loop.call_later(self.idle_after, self.idle_check)

    def idle_check(self) -> None:
        # One timer per connection, re-armed lazily: parking is then free.
        self.idle_timer = None
        if self.state != IDLE:
            return
        left = self.parked_at + self.idle_after - self.ctx.loop.time()
        if left > 0.01:
            self.idle_timer = self.ctx.loop.call_later(left, self.idle_check)
        else:
            self.close()
