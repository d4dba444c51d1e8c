"""The sidecar process: drain on SIGTERM, WebSocket tunnels, TCP listeners,
bounded memory under slow peers, several workers."""

from __future__ import annotations

import asyncio
import os
import re
import signal

import aiohttp
import pytest
from aiohttp import web

from tests.integration.client import Conn, get
from tests.integration.conftest import StartProxy
from tests.integration.origin import Origin
from tests.integration.proxyproc import basic_config

pytestmark = pytest.mark.integration

MB = 1024 * 1024


async def admin_get(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as resp,
    ):
        return resp.status, await resp.text()


async def test_sigterm_lets_requests_in_flight_finish(origin: Origin, proxies: StartProxy) -> None:
    proxy = await proxies(basic_config({"web": [origin.port]}))
    port = proxy.ports["outbound"]
    async with asyncio.timeout(15):
        idle = await Conn.open(port)
        assert (await idle.request(get("/"))).status == 200
        busy = [await Conn.open(port) for _ in range(3)]
        for conn in busy:
            conn.send(get("/slow?ms=1000"))
        await asyncio.sleep(0.3)
        assert (await admin_get(proxy.admin_port, "/ready"))[0] == 200
        proxy.terminate()
        await asyncio.sleep(0.2)
        assert (await admin_get(proxy.admin_port, "/ready"))[0] == 503
        assert await idle.closed_by_peer() == b""  # idle keep-alive: closed at once
        answers = [await conn.response() for conn in busy]
        for conn in busy:
            assert await conn.closed_by_peer() == b""
        code = await proxy.wait_exit(10)
    assert [(r.status, r.body, r.header("connection")) for r in answers] == [
        (200, b"hello world\n", "close")
    ] * 3
    assert code == 0
    with pytest.raises(OSError):
        await Conn.open(port)


async def test_websocket_echo_through_the_proxy(proxies: StartProxy) -> None:
    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str("echo:" + msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        ws_port = runner.addresses[0][1]
        proxy = await proxies(basic_config({"chat": [ws_port]}))
        url = f"http://127.0.0.1:{proxy.ports['outbound']}/ws"
        replies = []
        async with (
            asyncio.timeout(10),
            aiohttp.ClientSession() as session,
            session.ws_connect(url, headers={"Host": "chat"}) as ws,
        ):
            for text in ("one", "two", "x" * 100_000):
                await ws.send_str(text)
                replies.append((await ws.receive()).data)
        assert replies == ["echo:one", "echo:two", "echo:" + "x" * 100_000]
        # The closed tunnel released both connections: the drain has nothing to wait for.
        proxy.terminate()
        assert await proxy.wait_exit(5) == 0
    finally:
        await runner.cleanup()


async def test_tcp_listener_echoes_and_passes_half_close(proxies: StartProxy) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # until the client half-closes
        writer.write(b"echo:" + data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        echo_port = server.sockets[0].getsockname()[1]
        listeners = [
            {"name": "db", "protocol": "tcp", "address": "127.0.0.1", "port": 0, "service": "echo"}
        ]
        proxy = await proxies(basic_config({"echo": [echo_port]}, listeners))
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.ports["db"])
            writer.write(b"ping " * 1000)
            writer.write_eof()
            answer = await reader.read()
            writer.close()
            await writer.wait_closed()
        assert answer == b"echo:" + b"ping " * 1000
    finally:
        server.close()
        await server.wait_closed()


async def test_slow_reader_keeps_proxy_memory_bounded(origin: Origin, proxies: StartProxy) -> None:
    proxy = await proxies(basic_config({"web": [origin.port]}))
    size = 200 * MB
    peak = proxy.rss_kb()
    async with asyncio.timeout(120):
        conn = await Conn.open(proxy.ports["outbound"])
        conn.send(get(f"/big?n={size}"))
        await conn.reader.readuntil(b"\r\n\r\n")
        got = 0
        while got < size:
            data = await conn.reader.read(256 * 1024)
            assert data
            got += len(data)
            if got % (8 * MB) < 256 * 1024:
                peak = max(peak, proxy.rss_kb())
                await asyncio.sleep(0.01)
        await conn.close()
    assert got == size
    assert peak < 100 * 1024, f"proxy RSS peaked at {peak} kB"


async def test_slow_origin_reading_an_upload_keeps_proxy_memory_bounded(
    origin: Origin, proxies: StartProxy
) -> None:
    proxy = await proxies(basic_config({"web": [origin.port]}))
    size = 200 * MB
    block = b"u" * MB
    peak = proxy.rss_kb()
    async with asyncio.timeout(120):
        conn = await Conn.open(proxy.ports["outbound"])
        conn.send(
            b"PUT /sink?rate=4194304 HTTP/1.1\r\nHost: web\r\nContent-Length: %d\r\n\r\n" % size
        )
        for i in range(size // MB):
            conn.writer.write(block)
            await conn.writer.drain()
            if i % 8 == 0:
                peak = max(peak, proxy.rss_kb())
        resp = await conn.response()
        await conn.close()
    assert (resp.status, resp.body) == (200, str(size).encode())
    assert peak < 100 * 1024, f"proxy RSS peaked at {peak} kB"


def metric_total(text: str, code: str) -> float:
    pattern = rf'^meshproxy_requests_total\{{[^}}]*code="{code}"[^}}]*\}} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.M))


async def test_workers_share_ports_sum_metrics_and_restart(
    origin: Origin, proxies: StartProxy
) -> None:
    proxy = await proxies(basic_config({"web": [origin.port]}), "--workers", "2")
    port = proxy.ports["outbound"]
    async with asyncio.timeout(30):
        for _ in range(20):
            conn = await Conn.open(port)
            assert (await conn.request(get("/", extra="Connection: close\r\n"))).status == 200
            await conn.close()
        total = 0.0
        for _ in range(50):  # workers publish their counts about once a second
            total = metric_total((await admin_get(proxy.admin_port, "/metrics"))[1], "200")
            if total >= 20:
                break
            await asyncio.sleep(0.1)
        pids = [int(p) for p in re.findall(r"^ready pid=(\d+) worker=\d", proxy.log(), re.M)]
        os.kill(pids[0], signal.SIGKILL)
        for _ in range(100):
            if len(re.findall(r"^ready pid=\d+ worker=\d", proxy.log(), re.M)) >= 3:
                break
            await asyncio.sleep(0.1)
        conn = await Conn.open(port)
        assert (await conn.request(get("/"))).status == 200
        await conn.close()
    assert total == 20
    assert len(set(pids)) == 2
