"""Global rate limits against a real redis-server on a loopback port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshproxy.config.policy import RateLimit
from meshproxy.policy import ChainEntry, FilterChain, LocalReply, Pending, RequestContext
from meshproxy.policy.redis_limit import GlobalRateLimit
from tests.unit.policy.redis_server import RedisServer, free_port


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


def global_limit(url: str, **kw: Any) -> RateLimit:
    base: dict[str, Any] = {
        "key": "client_address",
        "requests_per_second": 10,
        "burst": 3,
        "scope": "global",
        "redis": {"url": url, "timeout": "50ms", "retry_after_error": "200ms"},
    }
    base.update(kw)
    return RateLimit.model_validate(base)


def ctx(now: float = 0.0, ip: str = "10.0.0.1") -> RequestContext:
    return RequestContext(b"GET", b"/", [], client_ip=ip, now=now)


@pytest.fixture
async def filters() -> AsyncIterator[list[GlobalRateLimit]]:
    made: list[GlobalRateLimit] = []
    yield made
    for f in made:
        await f.aclose()


async def decide(f: GlobalRateLimit, c: RequestContext) -> LocalReply | None:
    pending = f.on_request(c)
    if pending is None:
        return None
    result: LocalReply | None = await pending
    return result


async def test_gcra_admits_the_burst_then_refuses_with_the_wait(
    redis_server: RedisServer, filters: list[GlobalRateLimit]
) -> None:
    f = GlobalRateLimit([global_limit(redis_server.url, requests_per_second=1)], "ratings")
    filters.append(f)
    answers = [await decide(f, ctx()) for _ in range(4)]
    assert answers[:3] == [None, None, None]
    reply = answers[3]
    assert isinstance(reply, LocalReply) and reply.status == 429
    assert reply.header(b"retry-after") == b"1"
    assert reply.header(b"ratelimit-policy") == b'"client_address";q=3;w=3'
    assert f.counters.get("ratelimit_denied", "client_address") == 1


async def test_two_sidecars_share_one_limit(
    redis_server: RedisServer, filters: list[GlobalRateLimit]
) -> None:
    a = GlobalRateLimit([global_limit(redis_server.url, burst=4)], "ratings")
    b = GlobalRateLimit([global_limit(redis_server.url, burst=4)], "ratings")
    filters.extend([a, b])
    answers = [await decide(a if i % 2 else b, ctx()) for i in range(6)]
    assert [x is None for x in answers] == [True] * 4 + [False] * 2


async def test_keys_and_services_are_separate_buckets(
    redis_server: RedisServer, filters: list[GlobalRateLimit]
) -> None:
    ratings = GlobalRateLimit([global_limit(redis_server.url, burst=1)], "ratings")
    reviews = GlobalRateLimit([global_limit(redis_server.url, burst=1)], "reviews")
    filters.extend([ratings, reviews])
    assert await decide(ratings, ctx(ip="1.1.1.1")) is None
    assert await decide(ratings, ctx(ip="2.2.2.2")) is None
    assert await decide(reviews, ctx(ip="1.1.1.1")) is None
    assert await decide(ratings, ctx(ip="1.1.1.1")) is not None


async def test_gcra_spaces_admissions_at_the_rate(
    redis_server: RedisServer, filters: list[GlobalRateLimit]
) -> None:
    f = GlobalRateLimit([global_limit(redis_server.url, requests_per_second=50, burst=1)], "s")
    filters.append(f)
    admitted = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() - start < 0.5:
        admitted += await decide(f, ctx()) is None
        await asyncio.sleep(0.001)
    elapsed = loop.time() - start
    # 50/s with a burst of one: never more than 1 + 50 * elapsed.
    assert admitted <= 1 + 50 * elapsed + 1
    assert admitted >= 10


async def test_requests_without_the_key_make_no_redis_call(filters: list[GlobalRateLimit]) -> None:
    f = GlobalRateLimit(
        [global_limit(f"redis://127.0.0.1:{free_port()}/0", key="header", header="x-user")], "s"
    )
    filters.append(f)
    assert f.on_request(ctx()) is None


async def test_unreachable_redis_fails_open_marked_and_counted(
    filters: list[GlobalRateLimit],
) -> None:
    f = GlobalRateLimit([global_limit(f"redis://127.0.0.1:{free_port()}/0")], "s")
    filters.append(f)
    c = ctx(now=1.0)
    assert await decide(f, c) is None
    assert c.response_extra == [(b"x-meshproxy-ratelimit", b"fail-open")]
    assert f.counters.get("ratelimit_fail_open", "client_address") == 1
    assert f.counters.get("ratelimit_redis_errors", "client_address") == 1
    # Within retry_after_error: decided without trying Redis again.
    assert await decide(f, ctx(now=1.1)) is None
    assert f.counters.get("ratelimit_redis_errors", "client_address") == 1
    assert f.counters.get("ratelimit_fail_open", "client_address") == 2
    assert await decide(f, ctx(now=1.3)) is None
    assert f.counters.get("ratelimit_redis_errors", "client_address") == 2


async def test_unreachable_redis_fails_closed_when_configured(
    filters: list[GlobalRateLimit],
) -> None:
    f = GlobalRateLimit(
        [global_limit(f"redis://127.0.0.1:{free_port()}/0", on_redis_error="deny")], "s"
    )
    filters.append(f)
    c = ctx()
    reply = await decide(f, c)
    assert isinstance(reply, LocalReply) and reply.status == 503
    assert c.response_extra is None
    assert f.counters.get("ratelimit_fail_closed", "client_address") == 1


async def test_redis_stopping_mid_way_switches_to_the_failure_mode_and_back(
    tmp_path: Path, filters: list[GlobalRateLimit]
) -> None:
    server = RedisServer(tmp_path).start()
    try:
        f = GlobalRateLimit([global_limit(server.url, burst=100)], "s")
        filters.append(f)
        c = ctx(now=0.0)
        assert await decide(f, c) is None and c.response_extra is None
        port = server.port
        server.stop()
        c = ctx(now=1.0)
        assert await decide(f, c) is None
        assert c.response_extra == [(b"x-meshproxy-ratelimit", b"fail-open")]
        server.start(port=port)
        c = ctx(now=2.0)
        assert await decide(f, c) is None
        assert c.response_extra is None
    finally:
        server.stop()


async def test_a_hung_redis_costs_at_most_the_timeout(filters: list[GlobalRateLimit]) -> None:
    # A listener that accepts but never answers: the command times out.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        f = GlobalRateLimit([global_limit(f"redis://127.0.0.1:{port}/0")], "s")
        filters.append(f)
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await decide(f, ctx(now=start)) is None
        assert loop.time() - start < 1.0
        assert f.counters.get("ratelimit_fail_open", "client_address") == 1
    finally:
        server.close()
        await server.wait_closed()


async def test_in_a_chain_the_global_limit_takes_the_slow_path(
    redis_server: RedisServer, filters: list[GlobalRateLimit]
) -> None:
    f = GlobalRateLimit([global_limit(redis_server.url, burst=1)], "s")
    filters.append(f)
    chain = FilterChain([ChainEntry("ratelimit_global", f)])
    first = chain.on_request(ctx())
    assert isinstance(first, Pending)
    assert await first is None
    second = chain.on_request(ctx())
    assert isinstance(second, Pending)
    reply = await second
    assert isinstance(reply, LocalReply) and reply.status == 429
