"""An inbound listener without ``local_app``: a gateway where the node service's
rate limits and access rules apply, then the route table (a split) picks the
backend."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.integration.client import Conn
from tests.integration.conftest import StartProxy
from tests.integration.origin import Origin

pytestmark = pytest.mark.integration


def gateway_config(
    v1: Origin, v2: Origin, rate: int, access: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "node": {"id": "ratings-gw", "service": "ratings"},
        "admin": {"address": "127.0.0.1", "port": 0},
        "listeners": [
            {"name": "gateway", "direction": "inbound", "address": "127.0.0.1", "port": 0}
        ],
        "snapshot": {
            "services": {
                "ratings": {
                    "endpoints": [
                        {"address": "127.0.0.1", "port": v1.port, "labels": {"version": "v1"}},
                        {"address": "127.0.0.1", "port": v2.port, "labels": {"version": "v2"}},
                    ]
                }
            },
            "routes": [
                {
                    "service": "ratings",
                    "rules": [
                        {
                            "backends": [
                                {"subset": "v1", "weight": 50},
                                {"subset": "v2", "weight": 50},
                            ]
                        }
                    ],
                }
            ],
            "policies": [
                {
                    "service": "ratings",
                    "subsets": {
                        "v1": {"labels": {"version": "v1"}},
                        "v2": {"labels": {"version": "v2"}},
                    },
                    "rate_limits": [
                        {"key": "client_address", "requests_per_second": rate, "burst": rate}
                    ],
                }
            ],
            "access": access,
        },
    }


async def statuses(port: int, requests: list[bytes]) -> list[tuple[int, str | None]]:
    async with asyncio.timeout(20):
        conn = await Conn.open(port)
        out = []
        for raw in requests:
            resp = await conn.request(raw)
            out.append((resp.status, resp.header("x-origin")))
            if resp.header("connection") == "close":
                await conn.close()
                conn = await Conn.open(port)
        await conn.close()
        return out


def req(method: str, path: str) -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: ratings\r\n\r\n".encode()


async def test_gateway_enforces_the_services_access_rules_then_splits(
    proxies: StartProxy,
) -> None:
    v1, v2 = await Origin(tag="v1").start(), await Origin(tag="v2").start()
    try:
        access = [
            {"service": "ratings", "action": "allow", "rules": [{"to": {"methods": ["GET"]}}]}
        ]
        proxy = await proxies(gateway_config(v1, v2, 1_000_000, access))
        got = await statuses(
            proxy.ports["gateway"], [req("GET", "/r")] * 60 + [req("DELETE", "/r")]
        )
    finally:
        await v1.stop()
        await v2.stop()
    served = [origin for status, origin in got[:60] if status == 200]
    assert len(served) == 60
    assert 10 <= served.count("v1") <= 50 and served.count("v1") + served.count("v2") == 60
    assert got[60] == (403, None)
    assert v1.answered + v2.answered == 60  # the denied request reached no origin


async def test_gateway_applies_the_services_rate_limit(proxies: StartProxy) -> None:
    v1, v2 = await Origin(tag="v1").start(), await Origin(tag="v2").start()
    try:
        proxy = await proxies(gateway_config(v1, v2, 2, []))
        got = await statuses(proxy.ports["gateway"], [req("GET", "/r")] * 6)
    finally:
        await v1.stop()
        await v2.stop()
    codes = [status for status, _ in got]
    assert codes[:2] == [200, 200]
    assert 429 in codes[2:]
    assert v1.answered + v2.answered == codes.count(200)
