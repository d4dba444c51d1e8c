"""How the data path runs the policy chain, through running sidecars: filters
that await in either phase hold the request and the response, the path
checked is the path forwarded, and decisions reach the metrics.

The filters below are loaded by the sidecars by dotted path."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshproxy.policy import LocalReply, RequestContext
from tests.integration.client import Conn, Response
from tests.integration.conftest import StartProxy
from tests.integration.origin import Origin
from tests.integration.proxyproc import inbound_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HERE = "tests.integration.test_policy_sidecar_wiring"


class SlowStamp:
    """Awaits in both phases: stamps the request, may refuse it, then edits the response."""

    async def on_request(self, ctx: RequestContext) -> LocalReply | None:
        await asyncio.sleep(0.05)
        if ctx.header(b"x-deny") is not None:
            return LocalReply(403, "denied after a lookup")
        ctx.add_request_header(b"x-stamp", b"slow")
        return None

    async def on_response(self, ctx: RequestContext) -> None:
        await asyncio.sleep(0.05)
        ctx.set_response_header(b"x-phase", b"response")
        if ctx.header(b"x-teapot") is not None:
            ctx.status = 418


def importable() -> dict[str, str]:
    paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def slow_filter() -> dict[str, Any]:
    return {"path": f"{HERE}:SlowStamp", "direction": "inbound"}


async def test_awaiting_filters_hold_a_streamed_body_and_pipelined_requests_in_order(
    origin: Origin, proxies: StartProxy
) -> None:
    proxy = await proxies(inbound_config(origin.port, filters=[slow_filter()]), env=importable())
    async with asyncio.timeout(10):
        conn = await Conn.open(proxy.ports["inbound"])
        # The body arrives while the request phase awaits; a second request
        # is pipelined behind it.
        conn.send(b"POST /echo HTTP/1.1\r\nHost: ratings\r\nContent-Length: 10\r\n\r\nhello")
        await asyncio.sleep(0.02)
        conn.send(b" body" + b"GET / HTTP/1.1\r\nHost: ratings\r\nX-Teapot: 1\r\n\r\n")
        first = await conn.response("POST")
        second = await conn.response()
        await conn.close()
    assert (first.status, first.body) == (200, b"hello body")
    assert first.header("x-phase") == "response"
    assert second.status == 418
    assert second.header("x-phase") == "response"
    assert [(r.method, r.path) for r in origin.requests] == [("POST", "/echo"), ("GET", "/")]
    assert [r.headers.get("x-stamp") for r in origin.requests] == ["slow", "slow"]


async def test_an_awaiting_filter_may_refuse_and_the_connection_goes_on(
    origin: Origin, proxies: StartProxy
) -> None:
    proxy = await proxies(inbound_config(origin.port, filters=[slow_filter()]), env=importable())
    async with asyncio.timeout(10):
        conn = await Conn.open(proxy.ports["inbound"])
        refused = await conn.request(b"GET / HTTP/1.1\r\nHost: ratings\r\nX-Deny: 1\r\n\r\n")
        passed = await conn.request(b"GET / HTTP/1.1\r\nHost: ratings\r\n\r\n")
        await conn.close()
    assert (refused.status, refused.body) == (403, b"denied after a lookup\n")
    assert passed.status == 200
    assert len(origin.requests) == 1


async def test_a_client_gone_during_an_awaiting_filter_costs_nothing_upstream(
    origin: Origin, proxies: StartProxy
) -> None:
    proxy = await proxies(inbound_config(origin.port, filters=[slow_filter()]), env=importable())
    async with asyncio.timeout(10):
        conn = await Conn.open(proxy.ports["inbound"])
        conn.send(b"GET / HTTP/1.1\r\nHost: ratings\r\n\r\n")
        await asyncio.sleep(0.01)
        # A reset, not a half-close (which still gets its answer).
        sock = conn.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.writer.transport.abort()
        await asyncio.sleep(0.2)  # past the filter's await
        again = await Conn.open(proxy.ports["inbound"])
        resp = await again.request(b"GET / HTTP/1.1\r\nHost: ratings\r\n\r\n")
        await again.close()
    assert resp.status == 200
    assert len(origin.requests) == 1
    assert proxy.proc.poll() is None


async def ask(port: int, targets: list[str]) -> list[Response]:
    answers = []
    async with asyncio.timeout(10):
        for target in targets:
            conn = await Conn.open(port)
            answers.append(await conn.request(f"GET {target} HTTP/1.1\r\nHost: r\r\n\r\n".encode()))
            await conn.close()
    return answers


async def test_the_path_authz_checked_is_the_path_forwarded(
    origin: Origin, proxies: StartProxy
) -> None:
    access = [{"service": "ratings", "action": "deny", "rules": [{"to": {"paths": ["/admin/*"]}}]}]
    proxy = await proxies(inbound_config(origin.port, access=access))
    answers = await ask(
        proxy.ports["inbound"],
        [
            "/x/../ratings//1?q=/../a",
            "/public/%2e%2e/admin/users",
            "/admin%2Fusers",
            "/public/..%2fadmin/users",
            "/admin%5cusers",
            "/ratings/1",
        ],
    )
    assert [a.status for a in answers] == [200, 403, 400, 400, 400, 200]
    # Dot segments and merged slashes are gone, the query is left as sent.
    assert [r.raw.split(b" ")[1] for r in origin.requests] == [b"/ratings/1?q=/../a", b"/ratings/1"]


async def test_rate_limit_decisions_policy_events_and_refusal_flags_reach_the_metrics(
    origin: Origin, proxies: StartProxy
) -> None:
    limits = [{"key": "client_address", "requests_per_second": 1, "burst": 1}]
    access = [{"service": "ratings", "action": "deny", "rules": [{"to": {"paths": ["/admin"]}}]}]
    proxy = await proxies(
        inbound_config(
            origin.port, policies=[{"service": "ratings", "rate_limits": limits}], access=access
        )
    )
    port = proxy.ports["inbound"]
    statuses = [a.status for a in await ask(port, ["/admin", "/", "/"])]
    assert statuses == [403, 429, 429]  # the refused /admin took the one token first
    wanted = [
        'meshproxy_rate_limit_decisions_total{decision="allowed",service="ratings"} 1.0',
        'meshproxy_rate_limit_decisions_total{decision="limited",service="ratings"} 2.0',
        'meshproxy_policy_events_total{event="authz_denied",name="deny_policy"} 1.0',
        'meshproxy_policy_events_total{event="ratelimit_denied",name="client_address"} 2.0',
    ]
    async with aiohttp.ClientSession() as session, asyncio.timeout(10):
        while True:
            url = f"http://127.0.0.1:{proxy.admin_port}/metrics"
            async with session.get(url) as resp:
                text = await resp.text()
            if all(line in text for line in wanted):
                break
            await asyncio.sleep(0.2)  # counters are published at the next flush
    requests = [line for line in text.splitlines() if line.startswith("meshproxy_requests_total{")]
    flagged = {
        flag: line
        for line in requests
        for flag in ("RL", "UAEX")
        if f'response_flags="{flag}"' in line
    }
    assert flagged["RL"].endswith(" 2.0") and 'response_code="429"' in flagged["RL"]
    assert flagged["UAEX"].endswith(" 1.0") and 'response_code="403"' in flagged["UAEX"]
    assert 'destination_service="ratings"' in flagged["RL"]
