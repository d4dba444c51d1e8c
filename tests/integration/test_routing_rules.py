"""Route rules through a running sidecar: matching precedence, weighted and
sticky splits, header edits, rewrites and injected faults."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.integration.client import Conn, get
from tests.integration.conftest import StartProxy
from tests.integration.origin import Origin
from tests.integration.proxyproc import mesh_config

pytestmark = pytest.mark.integration


@pytest.fixture
async def v1v2() -> AsyncIterator[tuple[Origin, Origin]]:
    v1 = await Origin(tag="v1").start()
    v2 = await Origin(tag="v2").start()
    try:
        yield v1, v2
    finally:
        await v1.stop()
        await v2.stop()


def services(v1: Origin, v2: Origin) -> dict[str, list[tuple[int, str | None]]]:
    return {"web": [(v1.port, "v1"), (v2.port, "v2")]}


async def served_by(conn: Conn, path: str, extra: str = "") -> list[str | None]:
    resp = await conn.request(get(path, "web", extra))
    assert resp.status == 200, resp
    return [resp.header("x-origin")]


async def test_rules_are_tried_in_order_and_the_first_match_wins(
    v1v2: tuple[Origin, Origin], proxies: StartProxy
) -> None:
    v1, v2 = v1v2
    rules = [
        {"match": [{"headers": {"x-canary": {"exact": "yes"}}}], "backends": [{"subset": "v2"}]},
        {"match": [{"path": {"prefix": "/api"}}], "backends": [{"subset": "v1"}]},
        {"match": [{"path": {"prefix": "/api"}}], "backends": [{"subset": "v2"}]},
        {
            "match": [{"method": "GET", "path": {"exact": "/only-get"}}],
            "backends": [{"subset": "v2"}],
        },
    ]
    proxy = await proxies(mesh_config(services(v1, v2), [{"service": "web", "rules": rules}]))
    async with asyncio.timeout(10):
        conn = await Conn.open(proxy.ports["outbound"])
        assert await served_by(conn, "/api/x", "X-Canary: yes\r\n") == ["v2"]
        assert await served_by(conn, "/api/x") == ["v1"]  # the third rule is never reached
        assert await served_by(conn, "/only-get") == ["v2"]
        missing = await conn.request(get("/elsewhere", "web"))
        post = await conn.request(
            b"POST /only-get HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\n\r\n"
        )
        await conn.close()
    assert (missing.status, missing.body) == (404, b"no route\n")
    assert post.status == 404


async def test_a_90_10_split_sends_about_a_tenth_to_v2(
    v1v2: tuple[Origin, Origin], proxies: StartProxy
) -> None:
    v1, v2 = v1v2
    rules = [{"backends": [{"subset": "v1", "weight": 90}, {"subset": "v2", "weight": 10}]}]
    proxy = await proxies(mesh_config(services(v1, v2), [{"service": "web", "rules": rules}]))
    n = 1000
    async with asyncio.timeout(30):
        conn = await Conn.open(proxy.ports["outbound"])
        for _ in range(n):
            assert (await conn.request(get("/", "web"))).status == 200
        await conn.close()
    assert v1.answered + v2.answered == n
    # Binomial(1000, 0.1): sd 9.5, so 70..130 is beyond three sd either side.
    assert 70 <= v2.answered <= 130


async def test_a_split_keyed_by_header_keeps_each_user_on_one_backend(
    v1v2: tuple[Origin, Origin], proxies: StartProxy
) -> None:
    v1, v2 = v1v2
    rules = [
        {
            "backends": [{"subset": "v1", "weight": 50}, {"subset": "v2", "weight": 50}],
            "hash_on": {"header": "x-user"},
        }
    ]
    proxy = await proxies(mesh_config(services(v1, v2), [{"service": "web", "rules": rules}]))
    seen: dict[str, set[str | None]] = {}
    async with asyncio.timeout(20):
        conn = await Conn.open(proxy.ports["outbound"])
        for round_ in range(5):
            for user in range(20):
                name = f"user-{user}"
                seen.setdefault(name, set()).update(
                    await served_by(conn, f"/r{round_}", f"X-User: {name}\r\n")
                )
        await conn.close()
    assert all(len(backends) == 1 for backends in seen.values()), seen
    assert set().union(*seen.values()) == {"v1", "v2"}  # both halves are used


async def test_header_edits_apply_to_the_request_and_the_response(
    v1v2: tuple[Origin, Origin], proxies: StartProxy
) -> None:
    v1, v2 = v1v2
    rules = [
        {
            "backends": [{"subset": "v1"}],
            "headers": {
                "request": {
                    "set": {"X-Env": "prod"},
                    "add": {"X-Added": "1"},
                    "remove": ["X-Secret"],
                },
                "response": {"set": {"X-Origin": "hidden"}, "add": {"X-Served": "mesh"}},
            },
        }
    ]
    proxy = await proxies(mesh_config(services(v1, v2), [{"service": "web", "rules": rules}]))
    async with asyncio.timeout(10):
        conn = await Conn.open(proxy.ports["outbound"])
        resp = await conn.request(
            get("/", "web", "X-Env: dev\r\nX-Secret: s3cret\r\nX-Keep: k\r\n")
        )
        await conn.close()
    seen = v1.requests[-1].headers
    assert (seen.get("x-env"), seen.get("x-added"), seen.get("x-keep")) == ("prod", "1", "k")
    assert "x-secret" not in seen
    assert (resp.status, resp.header("x-origin"), resp.header("x-served")) == (
        200,
        "hidden",
        "mesh",
    )


async def test_prefix_and_host_rewrites_reach_the_upstream(
    v1v2: tuple[Origin, Origin], proxies: StartProxy
) -> None:
    v1, v2 = v1v2
    rules = [
        {
            "match": [{"path": {"prefix": "/api/"}}],
            "backends": [{"subset": "v1"}],
            "rewrite": {"prefix": "/v1/", "host": "internal.example"},
        },
        {"backends": [{"subset": "v2"}]},
    ]
    proxy = await proxies(mesh_config(services(v1, v2), [{"service": "web", "rules": rules}]))
    async with asyncio.timeout(10):
        conn = await Conn.open(proxy.ports["outbound"])
        assert (await conn.request(get("/api/users?id=7", "web"))).status == 200
        await conn.close()
    seen = v1.requests[-1]
    assert seen.path == "/v1/users"
    assert seen.raw.split(b"\r\n")[0] == b"GET /v1/users?id=7 HTTP/1.1"
    assert seen.headers["host"] == "internal.example"


async def test_an_abort_fault_answers_without_the_upstream(
    v1v2: tuple[Origin, Origin], proxies: StartProxy
) -> None:
    v1, v2 = v1v2
    rules = [
        {
            "match": [{"path": {"prefix": "/broken"}}],
            "backends": [{"subset": "v1"}],
            "fault": {"abort": {"status": 418}},
            "retries": {"attempts": 3, "retry_on": ["5xx"]},
        },
        {"backends": [{"subset": "v1"}]},
    ]
    proxy = await proxies(mesh_config(services(v1, v2), [{"service": "web", "rules": rules}]))
    async with asyncio.timeout(10):
        conn = await Conn.open(proxy.ports["outbound"])
        aborted = await conn.request(get("/broken", "web"))
        fine = await conn.request(get("/fine", "web"))  # same connection, still usable
        await conn.close()
    assert (aborted.status, aborted.body) == (418, b"fault filter abort\n")
    assert fine.status == 200
    assert [r.path for r in v1.requests] == ["/fine"]


async def test_a_delay_fault_holds_the_request_before_forwarding_it(
    v1v2: tuple[Origin, Origin], proxies: StartProxy
) -> None:
    v1, v2 = v1v2
    rules = [{"backends": [{"subset": "v1"}], "fault": {"delay": {"fixed": "1s"}}}]
    proxy = await proxies(mesh_config(services(v1, v2), [{"service": "web", "rules": rules}]))
    async with asyncio.timeout(10):
        conn = await Conn.open(proxy.ports["outbound"])
        conn.send(get("/", "web"))
        await asyncio.sleep(0.2)
        held = v1.answered  # still held by the proxy
        resp = await conn.response()
        await conn.close()
    assert held == 0
    assert resp.status == 200 and v1.answered == 1
