"""The two protocols wired together over recording transports (no sockets):
pipelining order, backpressure in both directions, framing of the relay."""

from __future__ import annotations

import asyncio

from meshproxy.config import parse_bootstrap
from meshproxy.http1 import HttpServer, ListenerContext, NullMetrics
from meshproxy.http1.upstream import UpstreamConnection
from meshproxy.resolve import Resolver

BOOT = parse_bootstrap(
    """
node: {id: n1, service: me}
listeners: [{name: out, port: 0}]
snapshot: {services: {web: {endpoints: [{address: 127.0.0.1, port: 9}]}}}
"""
)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Recorder:
    """The part of a transport the protocols use, recording what they do."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.writes = 0
        self.paused = False
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data
        self.writes += 1

    def take(self) -> bytes:
        out = bytes(self.data)
        self.data.clear()
        return out

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else None

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass


def wired() -> tuple[HttpServer, Recorder, UpstreamConnection, Recorder]:
    """A client connection and one idle pooled upstream connection."""
    loop = asyncio.get_running_loop()
    ctx = ListenerContext(
        loop, BOOT.listeners[0], Resolver(BOOT.snapshot, BOOT.listeners, "me"), NullMetrics()
    )
    server = HttpServer(ctx)
    down = Recorder()
    server.connection_made(down)  # type: ignore[arg-type]
    up = UpstreamConnection(ctx, ("127.0.0.1", 9, None))
    upt = Recorder()
    up.connection_made(upt)  # type: ignore[arg-type]
    up.park()
    return server, down, up, upt


async def test_request_head_and_small_body_leave_in_one_write() -> None:
    server, _down, _up, upt = wired()
    server.data_received(b"POST /x HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\n\r\nabc")
    sent = upt.take()
    assert upt.writes == 1
    assert sent.startswith(b"POST /x HTTP/1.1\r\n") and sent.endswith(b"\r\n\r\nabc")


async def test_pipelined_request_waits_for_the_current_response() -> None:
    server, down, up, upt = wired()
    server.data_received(
        b"GET /1 HTTP/1.1\r\nHost: web\r\n\r\nGET /2 HTTP/1.1\r\nHost: web\r\n\r\n"
    )
    assert upt.take().startswith(b"GET /1 ")
    up.data_received(OK)
    assert down.take() == OK
    # The first exchange returned the connection to the pool; the second took it.
    assert upt.take().startswith(b"GET /2 ")
    up.data_received(OK)
    assert down.take() == OK


async def test_slow_upstream_pauses_the_client_and_drain_resumes_it() -> None:
    server, down, up, _upt = wired()
    server.data_received(b"PUT /x HTTP/1.1\r\nHost: web\r\nContent-Length: 100\r\n\r\n")
    up.pause_writing()
    assert down.paused
    up.resume_writing()
    assert not down.paused


async def test_slow_client_pauses_the_upstream_and_drain_resumes_it() -> None:
    server, down, up, upt = wired()
    server.data_received(b"GET /big HTTP/1.1\r\nHost: web\r\n\r\n")
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
    server.pause_writing()
    assert upt.paused
    server.resume_writing()
    assert not upt.paused
    up.data_received(b"67890")
    assert down.take().endswith(b"\r\n\r\n1234567890")


async def test_chunked_answer_passes_through_raw_and_ends_the_exchange() -> None:
    server, down, up, upt = wired()
    server.data_received(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
    up.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc")
    up.data_received(b"\r\n0\r\n\r\n")
    out = down.take()
    assert out.endswith(b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in out
    upt.take()
    server.data_received(b"GET /next HTTP/1.1\r\nHost: web\r\n\r\n")
    assert upt.take().startswith(b"GET /next ")  # the connection was reused


async def test_upstream_bytes_past_the_response_retire_the_connection() -> None:
    server, down, up, upt = wired()
    server.data_received(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
    up.data_received(OK + b"HTTP/1.1 200 OK\r\n")
    assert down.take() == OK
    assert upt.closed


async def test_bad_request_is_answered_and_closes_without_forwarding() -> None:
    server, down, _up, upt = wired()
    server.data_received(b"GET / HTTP/1.1\r\nHost: web\r\nContent-Length: x\r\n\r\n")
    assert down.take().startswith(b"HTTP/1.1 400 ")
    assert down.closed
    assert upt.take() == b""
