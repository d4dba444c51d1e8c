"""Request smuggling attempts: refused with a 4xx (or 501), connection closed,
nothing smuggled reaches the origin, and the proxy goes on serving."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.client import Conn, get
from tests.integration.conftest import StartProxy
from tests.integration.origin import Origin
from tests.integration.proxyproc import basic_config

pytestmark = pytest.mark.integration

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: web\r\n\r\n"

ATTEMPTS: dict[str, bytes] = {
    "CL.TE": b"POST /echo HTTP/1.1\r\nHost: web\r\nContent-Length: 6\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "TE.CL": b"POST /echo HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 4\r\n\r\n5c\r\n" + SMUGGLED + b"\r\n0\r\n\r\n",
    "TE xchunked": b"POST /echo HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: xchunked\r\n"
    b"Content-Length: 5\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "TE space before colon": b"POST /echo HTTP/1.1\r\nHost: web\r\n"
    b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "TE obs-fold": b"POST /echo HTTP/1.1\r\nHost: web\r\nTransfer-Encoding:\r\n chunked\r\n"
    b"\r\n0\r\n\r\n" + SMUGGLED,
    "TE chunked, identity": b"POST /echo HTTP/1.1\r\nHost: web\r\n"
    b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "duplicate differing CL": b"POST /echo HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\n"
    b"Content-Length: 40\r\n\r\n" + SMUGGLED,
    "bare LF": b"GET / HTTP/1.1\nHost: web\n\n" + SMUGGLED,
    "NUL in field value": b"GET / HTTP/1.1\r\nHost: web\r\nX-A: a\x00b\r\n\r\n" + SMUGGLED,
    "control byte in field name": b"GET / HTTP/1.1\r\nHost: web\r\nX\x01A: b\r\n\r\n" + SMUGGLED,
    "bad chunk size": b"POST /echo HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n"
    b"\r\nzz\r\n" + SMUGGLED,
}


async def test_smuggling_attempts_are_refused_and_never_reach_the_origin(
    origin: Origin, proxies: StartProxy
) -> None:
    proxy = await proxies(basic_config({"web": [origin.port]}))
    port = proxy.ports["outbound"]
    outcomes: dict[str, tuple[int, bytes]] = {}
    async with asyncio.timeout(30):
        for name, attempt in ATTEMPTS.items():
            conn = await Conn.open(port)
            conn.send(attempt)
            resp = await conn.response()
            outcomes[name] = (resp.status, await conn.closed_by_peer())
        conn = await Conn.open(port)
        after = await conn.request(get("/"))
        await conn.close()
    for name, (status, trailing) in outcomes.items():
        assert 400 <= status <= 501 and status != 500, f"{name}: {status}"
        assert trailing == b"", f"{name}: a second response followed"
    assert "/smuggled" not in [r.path for r in origin.requests]
    assert after.status == 200
