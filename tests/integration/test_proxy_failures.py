"""Upstream failures and timeouts: what the client is told, and that the proxy goes on."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest

from tests.integration.client import Conn, get
from tests.integration.conftest import StartProxy
from tests.integration.origin import Origin
from tests.integration.proxyproc import basic_config

pytestmark = pytest.mark.integration


def with_timeouts(config: dict[str, object], **timeouts: str) -> dict[str, object]:
    listeners = config["listeners"]
    assert isinstance(listeners, list)
    for listener in listeners:
        listener["timeouts"] = timeouts
    return config


@contextmanager
def unanswered_port() -> Iterator[int]:
    """A port whose accept queue is full, so a connect to it hangs (SYNs dropped)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        server.close()


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


async def test_connect_timeout_answers_503(proxies: StartProxy) -> None:
    with unanswered_port() as port:
        proxy = await proxies(with_timeouts(basic_config({"web": [port]}), connect="300ms"))
        async with asyncio.timeout(10):
            conn = await Conn.open(proxy.ports["outbound"])
            resp = await conn.request(get("/"))
            await conn.close()
    assert (resp.status, resp.body) == (503, b"upstream connect timeout\n")


async def test_refused_connection_answers_503_and_keeps_the_client(
    origin: Origin, proxies: StartProxy
) -> None:
    config = basic_config({"dead": [closed_port()], "web": [origin.port]})
    proxy = await proxies(config)
    async with asyncio.timeout(10):
        conn = await Conn.open(proxy.ports["outbound"])
        refused = await conn.request(get("/", host="dead"))
        ok = await conn.request(get("/"))
        await conn.close()
    assert (refused.status, refused.body) == (503, b"upstream connection refused\n")
    assert ok.status == 200


async def test_response_timeout_answers_504(origin: Origin, proxies: StartProxy) -> None:
    proxy = await proxies(with_timeouts(basic_config({"web": [origin.port]}), request="300ms"))
    async with asyncio.timeout(10):
        conn = await Conn.open(proxy.ports["outbound"])
        slow = await conn.request(get("/slow?ms=2000"))
        ok = await conn.request(get("/"))
        await conn.close()
    assert (slow.status, slow.body) == (504, b"upstream response timeout\n")
    assert ok.status == 200


async def test_reset_before_response_answers_502(origin: Origin, proxies: StartProxy) -> None:
    proxy = await proxies(basic_config({"web": [origin.port]}))
    async with asyncio.timeout(10):
        conn = await Conn.open(proxy.ports["outbound"])
        # POST: not idempotent, so not retried.
        reset = await conn.request(
            b"POST /reset HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\n\r\n"
        )
        ok = await conn.request(get("/"))
        await conn.close()
    assert reset.status == 502
    assert reset.body == b"upstream reset before response\n"
    assert ok.status == 200


async def test_origin_closing_idle_connections_never_shows_as_502(
    proxies: StartProxy,
) -> None:
    origin = await Origin(idle_close_after=0.2).start()
    try:
        proxy = await proxies(basic_config({"web": [origin.port]}))
        async with asyncio.timeout(15):
            conn = await Conn.open(proxy.ports["outbound"])
            statuses = []
            for _ in range(4):
                statuses.append((await conn.request(get("/"))).status)
                await asyncio.sleep(0.3)  # the origin has closed its side by now
            await conn.close()
        assert statuses == [200, 200, 200, 200]
        assert origin.connections == 4
    finally:
        await origin.stop()


async def test_keep_alive_timeout_announced_by_origin_is_honoured(
    proxies: StartProxy,
) -> None:
    # The origin says timeout=2 and closes after 2s; the proxy retires the
    # connection a bit earlier, so its next request opens a fresh one.
    origin = await Origin(keep_alive_header="timeout=2", idle_close_after=2.0).start()
    try:
        proxy = await proxies(basic_config({"web": [origin.port]}))
        async with asyncio.timeout(15):
            conn = await Conn.open(proxy.ports["outbound"])
            assert (await conn.request(get("/"))).status == 200
            await asyncio.sleep(1.4)
            assert (await conn.request(get("/"))).status == 200
            await conn.close()
        assert origin.connections == 2
    finally:
        await origin.stop()


async def test_idle_client_connection_is_closed(origin: Origin, proxies: StartProxy) -> None:
    proxy = await proxies(with_timeouts(basic_config({"web": [origin.port]}), idle="300ms"))
    async with asyncio.timeout(10):
        conn = await Conn.open(proxy.ports["outbound"])
        assert (await conn.request(get("/"))).status == 200
        assert await conn.closed_by_peer() == b""


async def test_partial_head_times_out_with_408(origin: Origin, proxies: StartProxy) -> None:
    proxy = await proxies(with_timeouts(basic_config({"web": [origin.port]}), request_head="300ms"))
    async with asyncio.timeout(10):
        conn = await Conn.open(proxy.ports["outbound"])
        conn.send(b"GET / HTTP/1.1\r\nHost: w")
        resp = await conn.response()
        assert await conn.closed_by_peer() == b""
    assert resp.status == 408
    assert resp.header("connection") == "close"
    assert origin.requests == []


async def test_bad_upstream_response_answers_502(proxies: StartProxy) -> None:
    async def bad(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(bad, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        proxy = await proxies(basic_config({"web": [port]}))
        async with asyncio.timeout(10):
            conn = await Conn.open(proxy.ports["outbound"])
            resp = await conn.request(get("/"))
            await conn.close()
        assert (resp.status, resp.body) == (502, b"bad upstream response\n")
    finally:
        server.close()
        await server.wait_closed()


async def test_idempotent_request_failing_on_a_reused_connection_is_retried_once(
    proxies: StartProxy,
) -> None:
    origin = await Origin(drop_after=1).start()
    try:
        proxy = await proxies(basic_config({"web": [origin.port]}))
        async with asyncio.timeout(10):
            conn = await Conn.open(proxy.ports["outbound"])
            first = await conn.request(get("/"))
            retried = await conn.request(get("/head"))  # the reused connection drops it
            post = await conn.request(b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 1\r\n\r\nx")
            await conn.close()
        assert (first.status, retried.status) == (200, 200)
        assert retried.body.startswith(b"GET /head ")
        # A POST is not retried: the client learns the upstream failed.
        assert post.status == 502
        assert [r.method for r in origin.requests] == ["GET", "DROPPED", "GET", "DROPPED"]
    finally:
        await origin.stop()
