"""Rate limits through running sidecars: local 429s, one global limit shared by
three sidecars through a real redis-server, and Redis stopping mid-test."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.client import Conn, get
from tests.integration.conftest import StartProxy
from tests.integration.origin import Origin
from tests.integration.proxyproc import inbound_config
from tests.unit.policy.redis_server import RedisServer

pytestmark = pytest.mark.integration


def limited(origin: Origin, rate_limits: list[dict[str, Any]]) -> dict[str, Any]:
    """The sidecar in front of ``origin`` with ``rate_limits`` on its service."""
    return inbound_config(
        origin.port, policies=[{"service": "ratings", "rate_limits": rate_limits}]
    )


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


async def test_local_limit_answers_429_with_retry_after_and_ratelimit_headers(
    origin: Origin, proxies: StartProxy
) -> None:
    limits = [{"key": "client_address", "requests_per_second": 1, "burst": 2}]
    proxy = await proxies(limited(origin, limits))
    async with asyncio.timeout(10):
        conn = await Conn.open(proxy.ports["inbound"])
        answers = [await conn.request(get("/ratings/1", host="ratings")) for _ in range(3)]
        await conn.close()
    assert [r.status for r in answers] == [200, 200, 429]
    refused = answers[2]
    assert refused.header("retry-after") == "1"
    assert refused.header("ratelimit-policy") == '"client_address";q=2;w=2'
    assert refused.header("ratelimit") == '"client_address";r=0;t=1'
    assert len(origin.requests) == 2


async def hammer(port: int, until: float, admitted: list[float], refused: list[int]) -> None:
    loop = asyncio.get_running_loop()
    conn = await Conn.open(port)
    try:
        while loop.time() < until:
            resp = await conn.request(get("/", host="ratings"))
            if resp.status == 200:
                admitted.append(loop.time())
            else:
                refused.append(resp.status)
    finally:
        await conn.close()


async def test_three_sidecars_share_one_global_limit_of_100_per_second(
    origin: Origin, proxies: StartProxy, redis_server: RedisServer
) -> None:
    limits = [
        {
            "key": "service",
            "requests_per_second": 100,
            # A little slack (a tenth of a second): with none, every late arrival
            # on a busy machine loses its slot for good and the rate measured is
            # the scheduler's jitter, not the limit.  The first second, which
            # holds the burst, is not counted.
            "burst": 10,
            "scope": "global",
            "redis": {"url": redis_server.url, "timeout": "200ms"},
            "on_redis_error": "deny",
        }
    ]
    sidecars = [await proxies(limited(origin, limits)) for _ in range(3)]
    loop = asyncio.get_running_loop()
    admitted: list[float] = []
    refused: list[int] = []
    start = loop.time()
    async with asyncio.timeout(30):
        await asyncio.gather(
            *(
                hammer(p.ports["inbound"], start + 4.0, admitted, refused)
                for p in sidecars
                for _ in range(2)
            )
        )
    assert set(refused) == {429}  # over the limit, never a Redis failure
    per_second = [
        sum(start + s <= t < start + s + 1 for t in admitted) for s in (1, 2, 3)
    ]  # the first second holds the connection set-up: skipped
    for count in per_second:
        assert 95 <= count <= 105, per_second
    assert len(refused) > 300  # the load was well above the limit


async def test_redis_stopping_mid_test_fails_open_marked_then_recovers(
    origin: Origin, proxies: StartProxy, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path).start()
    try:
        limits = [
            {
                "key": "client_address",
                "requests_per_second": 1000,
                "scope": "global",
                "redis": {"url": server.url, "retry_after_error": "100ms"},
                "on_redis_error": "allow",
            }
        ]
        proxy = await proxies(limited(origin, limits))
        async with asyncio.timeout(20):
            conn = await Conn.open(proxy.ports["inbound"])
            before = await conn.request(get("/", host="ratings"))
            port = server.port
            server.stop()
            during = await conn.request(get("/", host="ratings"))
            server.start(port=port)
            await asyncio.sleep(0.3)  # past retry_after_error
            after = await conn.request(get("/", host="ratings"))
            await conn.close()
    finally:
        server.stop()
    assert (before.status, before.header("x-meshproxy-ratelimit")) == (200, None)
    assert (during.status, during.header("x-meshproxy-ratelimit")) == (200, "fail-open")
    assert (after.status, after.header("x-meshproxy-ratelimit")) == (200, None)


async def test_redis_stopping_mid_test_fails_closed_when_configured(
    origin: Origin, proxies: StartProxy, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path).start()
    try:
        limits = [
            {
                "key": "client_address",
                "requests_per_second": 1000,
                "scope": "global",
                "redis": {"url": server.url},
                "on_redis_error": "deny",
            }
        ]
        proxy = await proxies(limited(origin, limits))
        async with asyncio.timeout(20):
            conn = await Conn.open(proxy.ports["inbound"])
            before = await conn.request(get("/", host="ratings"))
            server.stop()
            during = await conn.request(get("/", host="ratings"))
            with contextlib.suppress(ConnectionError):
                await conn.close()
    finally:
        server.stop()
    assert before.status == 200
    assert during.status == 503
    assert len(origin.requests) == 1
