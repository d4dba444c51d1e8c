"""Per-rule resilience through a running sidecar: the route timeout, retries
of a 5xx and of a per-try timeout to a healthy endpoint, and mirroring."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.client import Conn, get
from tests.integration.conftest import StartProxy
from tests.integration.origin import Origin, running_origin
from tests.integration.proxyproc import mesh_config

pytestmark = pytest.mark.integration


async def test_the_route_timeout_answers_504(origin: Origin, proxies: StartProxy) -> None:
    rules = [{"timeout": "300ms"}]
    config = mesh_config({"web": [(origin.port, None)]}, [{"service": "web", "rules": rules}])
    proxy = await proxies(config)
    async with asyncio.timeout(10):
        conn = await Conn.open(proxy.ports["outbound"])
        resp = await conn.request(get("/slow?ms=3000", "web"))
        await conn.close()
    assert (resp.status, resp.body) == (504, b"upstream response timeout\n")


async def test_a_5xx_is_retried_on_a_healthy_endpoint(proxies: StartProxy) -> None:
    async with (
        running_origin(tag="bad", status_override=500) as bad,
        running_origin(tag="good") as good,
    ):
        rules = [{"retries": {"attempts": 2, "retry_on": ["5xx"], "backoff": {"base": "5ms"}}}]
        config = mesh_config(
            {"web": [(bad.port, None), (good.port, None)]}, [{"service": "web", "rules": rules}]
        )
        proxy = await proxies(config)
        async with asyncio.timeout(20):
            conn = await Conn.open(proxy.ports["outbound"])
            answers = [await conn.request(get(f"/n{i}", "web")) for i in range(20)]
            await conn.close()
    assert [(r.status, r.header("x-origin")) for r in answers] == [(200, "good")] * 20
    assert bad.answered > 0  # the bad endpoint was tried and its answers retried


async def test_a_post_body_is_replayed_on_retry_when_allowed(proxies: StartProxy) -> None:
    async with (
        running_origin(tag="bad", status_override=503) as bad,
        running_origin(tag="good") as good,
    ):
        rules = [
            {
                "retries": {
                    "attempts": 1,
                    "retry_on": ["gateway-error"],
                    "retry_non_idempotent": True,
                    "backoff": {"base": "5ms"},
                }
            }
        ]
        config = mesh_config(
            {"web": [(bad.port, None), (good.port, None)]}, [{"service": "web", "rules": rules}]
        )
        proxy = await proxies(config)
        body = b"x" * 3000
        async with asyncio.timeout(20):
            conn = await Conn.open(proxy.ports["outbound"])
            answers = []
            for _ in range(4):
                # Head first, body later: the body streams and is kept for a retry.
                conn.send(b"POST /echo HTTP/1.1\r\nHost: web\r\nContent-Length: 3000\r\n\r\n")
                await asyncio.sleep(0.02)
                conn.send(body)
                answers.append(await conn.response())
            await conn.close()
    assert [(r.status, r.body) for r in answers] == [(200, body)] * 4
    assert bad.answered > 0


async def test_a_per_try_timeout_moves_on_to_another_endpoint(proxies: StartProxy) -> None:
    async with (
        running_origin(tag="slow", delay=3.0) as slow,
        running_origin(tag="fast") as fast,
    ):
        rules = [
            {
                "timeout": "5s",
                "retries": {
                    "attempts": 2,
                    "per_try_timeout": "200ms",
                    "retry_on": ["gateway-error"],
                    "backoff": {"base": "5ms"},
                },
            }
        ]
        config = mesh_config(
            {"web": [(slow.port, None), (fast.port, None)]}, [{"service": "web", "rules": rules}]
        )
        proxy = await proxies(config)
        async with asyncio.timeout(20):
            conn = await Conn.open(proxy.ports["outbound"])
            answers = [await conn.request(get(f"/n{i}", "web")) for i in range(6)]
            await conn.close()
        tried_slow = len(slow.requests)
    assert [(r.status, r.header("x-origin")) for r in answers] == [(200, "fast")] * 6
    assert tried_slow > 0


async def test_retries_exhausted_pass_the_last_answer_on(proxies: StartProxy) -> None:
    async with running_origin(tag="bad", status_override=502) as bad:
        rules = [{"retries": {"attempts": 2, "retry_on": ["5xx"], "backoff": {"base": "5ms"}}}]
        config = mesh_config({"web": [(bad.port, None)]}, [{"service": "web", "rules": rules}])
        proxy = await proxies(config)
        async with asyncio.timeout(10):
            conn = await Conn.open(proxy.ports["outbound"])
            resp = await conn.request(get("/", "web"))
            await conn.close()
    assert resp.status == 502
    assert bad.answered == 3  # the first try and two retries


async def test_the_mirror_gets_a_copy_and_a_slow_mirror_does_not_hold_the_client(
    proxies: StartProxy,
) -> None:
    async with (
        running_origin(tag="primary") as primary,
        running_origin(tag="shadow", delay=5.0) as shadow,
    ):
        rules = [{"backends": [{"subset": "v1"}], "mirror": {"subset": "v2"}}]
        config = mesh_config(
            {"web": [(primary.port, "v1"), (shadow.port, "v2")]},
            [{"service": "web", "rules": rules}],
        )
        proxy = await proxies(config)
        async with asyncio.timeout(10):
            conn = await Conn.open(proxy.ports["outbound"])
            resp = await conn.request(
                b"POST /echo HTTP/1.1\r\nHost: web:80\r\nContent-Length: 5\r\n\r\nhello"
            )
            while not shadow.requests:  # noqa: ASYNC110 - polling the origin's record
                await asyncio.sleep(0.02)
            mirrored = shadow.requests[0]
            again = await conn.request(get("/", "web"))
            await conn.close()
        shadow_answered = shadow.answered
    assert (resp.status, resp.body, resp.header("x-origin")) == (200, b"hello", "primary")
    assert again.status == 200
    # The client had its answers while the mirror was still holding its copy.
    assert shadow_answered == 0
    assert (mirrored.method, mirrored.path, mirrored.body) == ("POST", "/echo", b"hello")
    assert mirrored.headers["host"] == "web-shadow:80"
    assert [r.path for r in primary.requests] == ["/echo", "/"]
