"""The sidecar's side traffic to STRICT services goes over mTLS, as its
requests do: a mirrored copy reaches the shadow service through that
service's sidecar, active health checks keep an mTLS endpoint healthy (and
fail against a sidecar with another SPIFFE ID), and an L4 listener carries
bytes both ways to a peer's mTLS inbound TCP listener.  Real sidecars
(``python -m meshproxy run``) with certificates from a real ``meshcontrol``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import StartProxy
from tests.integration.controlproc import meshcontrol
from tests.integration.origin import Origin
from tests.integration.proxyproc import ProxyProcess
from tests.integration.test_mtls_sidecar import admin_json, call, refusals, sidecar

pytestmark = pytest.mark.integration

TOKENS = {
    "tok-reviews": "default/reviews",
    "tok-ratings": "default/ratings",
    "tok-details": "default/details",
}
LIMIT = 1 << 20  # stream buffer: one line of the TCP test is 300 kB


@pytest.fixture
def control_url(tmp_path: Path) -> Iterator[str]:
    env = {
        "MESHCONTROL_ADMIN_TOKEN": "side-traffic-admin",
        "MESHCONTROL_CA_BOOTSTRAP_TOKENS": json.dumps(TOKENS),
    }
    with meshcontrol(tmp_path, env, log=tmp_path / "meshcontrol.log") as base:
        yield base


@pytest.fixture
async def shadow() -> AsyncIterator[Origin]:
    server = await Origin(tag="shadow").start()
    try:
        yield server
    finally:
        await server.stop()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> bool:
    """Poll ``check`` every 0.1 s until it holds or ``within`` has passed."""
    for _ in range(int(within / 0.1)):
        if await check():
            return True
        await asyncio.sleep(0.1)
    return await check()


async def health_of(proxy: ProxyProcess, service: str) -> list[str]:
    view = await admin_json(proxy, "/clusters")
    return [endpoint["health"] for endpoint in view[service]["endpoints"]]


async def test_a_mirror_to_a_strict_service_reaches_its_sidecar_over_mtls(
    control_url: str, origin: Origin, shadow: Origin, proxies: StartProxy
) -> None:
    ratings = await proxies(sidecar("ratings", "tok-ratings", control_url, local_app=origin.port))
    details = await proxies(sidecar("details", "tok-details", control_url, local_app=shadow.port))
    boot = sidecar(
        "reviews",
        "tok-reviews",
        control_url,
        services={"ratings": ratings.ports["inbound"], "details": details.ports["inbound"]},
    )
    boot["snapshot"]["routes"] = [
        {
            "service": "ratings",
            "rules": [{"match": [{"path": {"prefix": "/"}}], "mirror": {"service": "details"}}],
        }
    ]
    reviews = await proxies(boot)

    async def mirrored() -> bool:
        return any(seen.path == "/mirrored" for seen in shadow.requests)

    async with asyncio.timeout(30):
        answer = await call(reviews.ports["outbound"], "/mirrored", "ratings")
        arrived = await eventually(mirrored)
        seen = await refusals(reviews) | await refusals(details)
    assert answer == (200, b"hello world\n")  # the primary, from ratings' origin
    assert arrived
    assert [(s.path, s.headers["host"]) for s in shadow.requests] == [
        ("/mirrored", "ratings-shadow")
    ]
    assert [s.path for s in origin.requests] == ["/mirrored"]
    assert seen == {}  # no plaintext refused by details' STRICT inbound


async def test_health_checks_pass_over_mtls_and_fail_against_another_spiffe_id(
    control_url: str, origin: Origin, proxies: StartProxy
) -> None:
    ratings = await proxies(sidecar("ratings", "tok-ratings", control_url, local_app=origin.port))
    inbound = ratings.ports["inbound"]
    check = {"path": "/healthz", "interval": "100ms", "timeout": "2s", "unhealthy_threshold": 1}
    # "details" is given ratings' sidecar: its probes meet the wrong SPIFFE ID.
    boot = sidecar(
        "reviews",
        "tok-reviews",
        control_url,
        services={"ratings": inbound, "details": inbound},
    )
    boot["snapshot"]["policies"] = [
        {"service": "ratings", "health_check": check},
        {"service": "details", "health_check": check},
    ]
    reviews = await proxies(boot)

    async def settled() -> bool:
        return await health_of(reviews, "ratings") == ["healthy"] and await health_of(
            reviews, "details"
        ) == ["unhealthy"]

    async def ratings_unhealthy() -> bool:
        return await health_of(reviews, "ratings") == ["unhealthy"]

    async with asyncio.timeout(30):
        assert await eventually(settled)
        seen_at_caller = await refusals(reviews)
        seen_at_ratings = await refusals(ratings)
        # The probe really reaches the application behind ratings' sidecar:
        # its answer decides the endpoint's health.
        origin.health_status = 503
        turned = await eventually(ratings_unhealthy)
    assert set(seen_at_caller) == {("outbound", "wrong_spiffe_id")}
    # Every probe to ratings' STRICT port was mTLS.  (The probes to
    # "details" end in an abort right after the handshake, which that side
    # may count as a failed one.)
    assert ("inbound", "plaintext_on_strict") not in seen_at_ratings
    assert turned


async def test_a_tcp_listener_carries_bytes_both_ways_to_a_strict_service(
    control_url: str, proxies: StartProxy
) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Answers each line as it comes (no half-close needed: TLS has none).
        try:
            while line := await reader.readline():
                writer.write(b"echo:" + line)
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, limit=LIMIT)
    try:
        app_port = server.sockets[0].getsockname()[1]
        db: dict[str, Any] = sidecar("ratings", "tok-ratings", control_url)
        db["listeners"] = [
            {
                "name": "db-in",
                "protocol": "tcp",
                "direction": "inbound",
                "address": "127.0.0.1",
                "port": 0,
                "service": "ratings",
            }
        ]
        db["snapshot"]["services"] = {
            "ratings": {"endpoints": [{"address": "127.0.0.1", "port": app_port}]}
        }
        ratings = await proxies(db)
        db_in = ratings.ports["db-in"]
        boot = sidecar(
            "reviews",
            "tok-reviews",
            control_url,
            services={"ratings": db_in, "details": db_in},
        )
        boot["listeners"] = [
            {"name": name, "protocol": "tcp", "address": "127.0.0.1", "port": 0, "service": name}
            for name in ("ratings", "details")
        ]
        reviews = await proxies(boot)
        big = b"x" * 300_000 + b"\n"
        async with asyncio.timeout(30):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", reviews.ports["ratings"], limit=LIMIT
            )
            answers = []
            for line in (b"ping 1\n", b"ping 2\n", big):
                writer.write(line)
                answers.append(await reader.readline())
            writer.close()
            await writer.wait_closed()
            # Plaintext straight to the STRICT inbound TCP port is refused.
            reader, writer = await asyncio.open_connection("127.0.0.1", db_in)
            writer.write(b"ping 3\n")
            try:
                plain = await reader.read()
            except ConnectionResetError:  # closed with the peeked byte unread
                plain = b""
            writer.close()
            # "details" is answered by ratings' sidecar: refused by the caller.
            reader, writer = await asyncio.open_connection("127.0.0.1", reviews.ports["details"])
            writer.write(b"ping 4\n")
            wrong = await reader.read()
            writer.close()
            seen_at_caller = await refusals(reviews)
            seen_at_ratings = await refusals(ratings)
    finally:
        server.close()
        await server.wait_closed()
    assert answers == [b"echo:ping 1\n", b"echo:ping 2\n", b"echo:" + big]
    assert plain == b"" and wrong == b""
    assert seen_at_caller == {("outbound", "wrong_spiffe_id"): 1.0}
    # The aborted "details" handshake may count there too.
    assert seen_at_ratings.get(("inbound", "plaintext_on_strict")) == 1.0
