"""The HTTP/1.1 proxy end to end: a real ``meshproxy run`` between raw clients and an origin."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.client import Conn, get
from tests.integration.conftest import StartProxy
from tests.integration.origin import Origin
from tests.integration.proxyproc import basic_config

pytestmark = pytest.mark.integration


async def test_requests_reuse_one_upstream_connection(origin: Origin, proxies: StartProxy) -> None:
    proxy = await proxies(basic_config({"web": [origin.port]}))
    async with asyncio.timeout(10):
        for _ in range(3):
            conn = await Conn.open(proxy.ports["outbound"])
            for _ in range(5):
                resp = await conn.request(get("/"))
                assert (resp.status, resp.body) == (200, b"hello world\n")
            await conn.close()
    assert origin.connections == 1
    assert len(origin.requests) == 15


async def test_pipelined_requests_answer_in_order(origin: Origin, proxies: StartProxy) -> None:
    proxy = await proxies(basic_config({"web": [origin.port]}))
    async with asyncio.timeout(10):
        conn = await Conn.open(proxy.ports["outbound"])
        # The first answer is the slowest: order must still hold.
        conn.send(get("/slow?ms=200") + get("/head?n=2") + get("/head?n=3") + get("/chunked?n=2"))
        first = await conn.response()
        second = await conn.response()
        third = await conn.response()
        fourth = await conn.response()
        await conn.close()
    assert first.body == b"hello world\n"
    assert second.body.startswith(b"GET /head?n=2 ")
    assert third.body.startswith(b"GET /head?n=3 ")
    assert fourth.body == b"part0part1"
    assert [r.path for r in origin.requests] == ["/slow", "/head", "/head", "/chunked"]


async def test_chunked_request_body_reaches_origin_and_chunked_answer_passes_through(
    origin: Origin, proxies: StartProxy
) -> None:
    proxy = await proxies(basic_config({"web": [origin.port]}))
    async with asyncio.timeout(10):
        conn = await Conn.open(proxy.ports["outbound"])
        conn.send(b"POST /echo HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n")
        conn.send(b"5\r\nhello\r\n")
        await asyncio.sleep(0.05)
        conn.send(b"6\r\n world\r\n0\r\n\r\n")
        echoed = await conn.response()
        chunked = await conn.request(get("/chunked?n=3"))
        await conn.close()
    assert (echoed.status, echoed.body) == (200, b"hello world")
    assert origin.requests[0].headers["transfer-encoding"] == "chunked"
    assert chunked.header("transfer-encoding") == "chunked"
    assert chunked.raw_body == b"5\r\npart0\r\n5\r\npart1\r\n5\r\npart2\r\n0\r\n\r\n"


async def test_http10_client_gets_chunked_answer_decoded_then_close(
    origin: Origin, proxies: StartProxy
) -> None:
    proxy = await proxies(basic_config({"web": [origin.port]}))
    async with asyncio.timeout(10):
        conn = await Conn.open(proxy.ports["outbound"])
        resp = await conn.request(get("/chunked?n=2", version="1.0"))
        assert await conn.closed_by_peer() == b""
    assert resp.header("transfer-encoding") is None
    assert resp.header("connection") == "close"
    assert resp.body == b"part0part1"


async def test_http10_client_keeps_alive_only_when_asked(
    origin: Origin, proxies: StartProxy
) -> None:
    proxy = await proxies(basic_config({"web": [origin.port]}))
    async with asyncio.timeout(10):
        conn = await Conn.open(proxy.ports["outbound"])
        first = await conn.request(get("/", version="1.0", extra="Connection: keep-alive\r\n"))
        second = await conn.request(get("/", version="1.0"))
        assert await conn.closed_by_peer() == b""
    assert first.header("connection") == "keep-alive"
    assert second.header("connection") == "close"
    assert origin.requests[1].raw.startswith(b"GET / HTTP/1.1\r\n")


async def test_expect_continue_relays_the_origin_interim_answer(
    origin: Origin, proxies: StartProxy
) -> None:
    proxy = await proxies(basic_config({"web": [origin.port]}))
    async with asyncio.timeout(10):
        conn = await Conn.open(proxy.ports["outbound"])
        conn.send(
            b"POST /continue HTTP/1.1\r\nHost: web\r\nExpect: 100-continue\r\n"
            b"Content-Length: 4\r\n\r\n"
        )
        interim = await conn.reader.readuntil(b"\r\n\r\n")
        conn.send(b"data")
        final = await conn.response()
        await conn.close()
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert (final.status, final.body) == (200, b"data")


async def test_early_hints_reach_http11_clients_without_hop_by_hop_fields(
    origin: Origin, proxies: StartProxy
) -> None:
    proxy = await proxies(basic_config({"web": [origin.port]}))
    async with asyncio.timeout(10):
        conn = await Conn.open(proxy.ports["outbound"])
        conn.send(get("/early-hints"))
        interim = await conn.reader.readuntil(b"\r\n\r\n")
        final = await conn.response()
        old = await Conn.open(proxy.ports["outbound"])  # HTTP/1.0 knows no 1xx
        only = await old.request(get("/early-hints", version="1.0"))
        await conn.close()
        await old.close()
    assert interim == b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    assert (final.status, final.body) == (200, b"hello world\n")
    assert only.status == 200 and only.body == b"hello world\n"


async def test_hop_by_hop_fields_are_removed_both_ways(origin: Origin, proxies: StartProxy) -> None:
    proxy = await proxies(basic_config({"web": [origin.port]}))
    async with asyncio.timeout(10):
        conn = await Conn.open(proxy.ports["outbound"])
        resp = await conn.request(
            get(
                "/hop",
                extra="Connection: x-private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\n"
                "Proxy-Connection: keep-alive\r\nTE: trailers\r\nX-Kept: yes\r\n",
            )
        )
        await conn.close()
    seen = origin.requests[0].headers
    for name in ("connection", "x-private", "keep-alive", "proxy-connection", "te"):
        assert name not in seen
    assert seen["x-kept"] == "yes"
    names = {n.lower() for n, _ in resp.headers}
    for name in ("x-secret", "keep-alive", "proxy-connection", "trailer", "upgrade", "connection"):
        assert name not in names
    assert resp.body == b"hop"


async def test_forwarded_headers_and_request_id(origin: Origin, proxies: StartProxy) -> None:
    proxy = await proxies(basic_config({"web": [origin.port]}))
    async with asyncio.timeout(10):
        conn = await Conn.open(proxy.ports["outbound"])
        await conn.request(
            get("/", extra="X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n")
        )
        await conn.request(get("/", extra="X-Request-Id: given-id\r\n"))
        await conn.request(get("/"))
        await conn.close()
    first, second, third = (r.headers for r in origin.requests)
    assert first["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert first["x-forwarded-proto"] == "http"
    assert second["x-forwarded-for"] == "127.0.0.1"
    assert second["x-request-id"] == "given-id"
    assert len(third["x-request-id"]) >= 16
    assert third["x-request-id"] != first["x-request-id"]


async def test_absolute_form_target_picks_service_and_becomes_origin_form(
    origin: Origin, proxies: StartProxy
) -> None:
    proxy = await proxies(basic_config({"web": [origin.port]}))
    async with asyncio.timeout(10):
        conn = await Conn.open(proxy.ports["outbound"])
        resp = await conn.request(
            b"GET http://web.default.svc:8080/head?q=1 HTTP/1.1\r\nHost: other\r\n\r\n"
        )
        await conn.close()
    assert resp.status == 200
    assert origin.requests[0].raw.startswith(b"GET /head?q=1 HTTP/1.1\r\n")
    assert origin.requests[0].headers["host"] == "web.default.svc:8080"


async def test_unknown_service_is_404_and_connect_is_refused(
    origin: Origin, proxies: StartProxy
) -> None:
    proxy = await proxies(basic_config({"web": [origin.port]}))
    async with asyncio.timeout(10):
        conn = await Conn.open(proxy.ports["outbound"])
        unknown = await conn.request(get("/", host="nope"))
        ok = await conn.request(get("/", host="web.ns.svc.cluster.local:80"))
        connect = await conn.request(b"CONNECT web:443 HTTP/1.1\r\nHost: web:443\r\n\r\n")
        assert await conn.closed_by_peer() == b""
    assert (unknown.status, unknown.body) == (404, b"unknown service\n")
    assert unknown.header("content-type") == "text/plain"
    assert ok.status == 200
    assert connect.status in (405, 501)
    assert len(origin.requests) == 1


async def test_round_robin_over_endpoints_and_inbound_to_local_app(
    proxies: StartProxy,
) -> None:
    a, b, app = Origin(), Origin(), Origin()
    for server in (a, b, app):
        await server.start()
    try:
        listeners = [
            {"name": "outbound", "address": "127.0.0.1", "port": 0},
            {
                "name": "inbound",
                "direction": "inbound",
                "address": "127.0.0.1",
                "port": 0,
                "local_app": f"127.0.0.1:{app.port}",
            },
        ]
        proxy = await proxies(basic_config({"web": [a.port, b.port]}, listeners))
        async with asyncio.timeout(10):
            conn = await Conn.open(proxy.ports["outbound"])
            for _ in range(4):
                assert (await conn.request(get("/"))).status == 200
            await conn.close()
            conn = await Conn.open(proxy.ports["inbound"])
            assert (await conn.request(get("/", host="anything"))).status == 200
            await conn.close()
        assert (len(a.requests), len(b.requests), len(app.requests)) == (2, 2, 1)
    finally:
        for server in (a, b, app):
            await server.stop()


async def test_large_body_both_ways(origin: Origin, proxies: StartProxy) -> None:
    proxy = await proxies(basic_config({"web": [origin.port]}))
    body = bytes(range(256)) * 4096  # 1 MiB
    async with asyncio.timeout(20):
        conn = await Conn.open(proxy.ports["outbound"])
        conn.send(b"PUT /echo HTTP/1.1\r\nHost: web\r\nContent-Length: %d\r\n\r\n" % len(body))
        conn.send(body)
        echoed = await conn.response()
        big = await conn.request(get("/big?n=5000000"))
        await conn.close()
    assert echoed.body == body
    assert len(big.body) == 5_000_000


async def test_expect_continue_to_an_http10_origin_is_answered_by_the_proxy(
    proxies: StartProxy,
) -> None:
    origin = await Origin(version="HTTP/1.0").start()
    try:
        proxy = await proxies(basic_config({"web": [origin.port]}))
        async with asyncio.timeout(10):
            conn = await Conn.open(proxy.ports["outbound"])
            assert (await conn.request(get("/"))).status == 200  # the proxy learns "1.0"
            conn.send(
                b"POST /echo HTTP/1.1\r\nHost: web\r\nExpect: 100-continue\r\n"
                b"Content-Length: 4\r\n\r\n"
            )
            interim = await conn.reader.readuntil(b"\r\n\r\n")
            conn.send(b"data")
            final = await conn.response()
            await conn.close()
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert (final.status, final.body) == (200, b"data")
    finally:
        await origin.stop()
