"""Upstream resilience through a running sidecar: outlier ejection and
return, circuit-breaker overflow, active health checks, admin /clusters."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from tests.integration.client import Conn, get
from tests.integration.conftest import StartProxy
from tests.integration.origin import running_origin
from tests.integration.proxyproc import mesh_config

pytestmark = pytest.mark.integration


async def admin_get(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as resp,
    ):
        return resp.status, await resp.text()


async def clusters(port: int) -> dict[str, Any]:
    status, text = await admin_get(port, "/clusters")
    assert status == 200
    view: dict[str, Any] = json.loads(text)
    return view


def endpoint_view(view: dict[str, Any], service: str, port: int) -> dict[str, Any]:
    found: dict[str, Any] = next(e for e in view[service]["endpoints"] if e["port"] == port)
    return found


async def test_a_failing_endpoint_is_ejected_and_comes_back_after_it_recovers(
    proxies: StartProxy,
) -> None:
    async with (
        running_origin(tag="a") as a,
        running_origin(tag="b") as b,
        running_origin(tag="c") as c,
    ):
        policy = {
            "service": "web",
            "outlier_detection": {
                "consecutive_5xx": 3,
                "interval": "200ms",
                "base_ejection_time": "1s",
                "max_ejection_percent": 50,
            },
        }
        config = mesh_config(
            {"web": [(a.port, None), (b.port, None), (c.port, None)]}, policies=[policy]
        )
        proxy = await proxies(config)
        port = proxy.ports["outbound"]
        async with asyncio.timeout(30):
            conn = await Conn.open(port)
            for _ in range(6):
                assert (await conn.request(get("/", "web"))).status == 200
            c.status_override = 500
            errors = 0
            for _ in range(60):
                if (await conn.request(get("/", "web"))).status == 500:
                    errors += 1
            ejected = endpoint_view(await clusters(proxy.admin_port), "web", c.port)
            c.status_override = None
            before = c.answered
            back = False
            for _ in range(100):  # about 2 s: past the 1 s ejection
                assert (await conn.request(get("/", "web"))).status == 200
                if c.answered > before:
                    back = True
                    break
                await asyncio.sleep(0.02)
            await conn.close()
    assert errors == 3  # retries off: exactly the configured count reached clients
    assert ejected["ejected"] is True and ejected["times_ejected"] == 1
    assert back


async def test_breaker_overflow_answers_503_at_once_and_admin_stays_responsive(
    proxies: StartProxy,
) -> None:
    async with running_origin() as origin:
        policy = {"service": "web", "circuit_breakers": {"max_requests": 1}}
        config = mesh_config({"web": [(origin.port, None)]}, policies=[policy])
        proxy = await proxies(config)
        port = proxy.ports["outbound"]
        async with asyncio.timeout(15):
            slow = await Conn.open(port)
            slow.send(get("/slow?ms=1500", "web"))
            while not origin.requests:  # noqa: ASYNC110 - polling the origin's record
                await asyncio.sleep(0.01)
            quick = await Conn.open(port)
            refused = await quick.request(get("/", "web"))
            ready = await admin_get(proxy.admin_port, "/ready")
            view = await clusters(proxy.admin_port)
            slow_answer = await slow.response()
            after = await quick.request(get("/", "web"))
            await slow.close()
            await quick.close()
    assert refused.status == 503
    assert refused.body == b"upstream overflow: max_requests (1) reached\n"
    assert slow_answer.status == 200 and after.status == 200
    assert ready[0] == 200
    assert view["web"]["circuit_breakers"]["overflows"]["rq_overflow"] == 1
    # The refused request never reached the origin.
    assert [r.path for r in origin.requests] == ["/slow", "/"]


async def test_an_endpoint_failing_its_health_check_gets_no_traffic(
    proxies: StartProxy,
) -> None:
    async with (
        running_origin(tag="good") as good,
        running_origin(tag="sick", health_status=503) as sick,
    ):
        policy = {
            "service": "web",
            "health_check": {
                "path": "/healthz",
                "interval": "100ms",
                "timeout": "500ms",
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
            },
            "load_balancer": {"healthy_panic_threshold": 0},
        }
        config = mesh_config({"web": [(good.port, None), (sick.port, None)]}, policies=[policy])
        proxy = await proxies(config)
        async with asyncio.timeout(15):
            while True:  # until the first probes have judged both endpoints
                view = await clusters(proxy.admin_port)
                health = {e["port"]: e["health"] for e in view["web"]["endpoints"]}
                if "unknown" not in health.values():
                    break
                await asyncio.sleep(0.05)
            conn = await Conn.open(proxy.ports["outbound"])
            answers = [await conn.request(get(f"/n{i}", "web")) for i in range(30)]
            sick.health_status = 200
            while (  # noqa: ASYNC110 - polling the admin view
                endpoint_view(await clusters(proxy.admin_port), "web", sick.port)["health"]
                != "healthy"
            ):
                await asyncio.sleep(0.05)
            later = [await conn.request(get(f"/m{i}", "web")) for i in range(10)]
            await conn.close()
    assert health == {good.port: "healthy", sick.port: "unhealthy"}
    assert [r.header("x-origin") for r in answers] == ["good"] * 30
    assert {r.header("x-origin") for r in later} == {"good", "sick"}


async def test_clusters_shows_endpoints_and_their_counters(proxies: StartProxy) -> None:
    async with running_origin() as origin:
        config = mesh_config({"web": [(origin.port, None)], "idle": []})
        proxy = await proxies(config)
        async with asyncio.timeout(10):
            conn = await Conn.open(proxy.ports["outbound"])
            for _ in range(3):
                assert (await conn.request(get("/", "web"))).status == 200
            no_endpoint = await conn.request(get("/", "idle"))
            view = await clusters(proxy.admin_port)
            await conn.close()
    assert (no_endpoint.status, no_endpoint.body) == (503, b"no healthy upstream\n")
    web = endpoint_view(view, "web", origin.port)
    assert (web["requests"], web["active_requests"], web["active_connections"]) == (3, 0, 1)
    assert view["idle"]["endpoints"] == []
