"""mTLS between workloads whose certificates come from a real ``meshcontrol``
process: they talk, strangers are refused, access by principal holds, and a
root rotation under steady load loses no request."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from meshproxy.config.access import Access
from meshproxy.policy.authz import Authz
from meshproxy.policy.chain import RequestContext
from meshproxy.security.handshake import InboundListener
from meshproxy.security.identity import ControlPlaneCA, IdentityManager
from meshproxy.security.refusals import Refusals, TLSRefused
from meshproxy.security.spiffe import SpiffeId
from tests.integration.controlproc import meshcontrol
from tests.unit.security.pki import PKI
from tests.unit.security.tls_peers import Load, dial

pytestmark = pytest.mark.integration

ADMIN = "mtls-admin-token"
TOKENS = {
    "tok-reviews": "default/reviews",
    "tok-ratings": "default/ratings",
    "tok-any": "default/*",
}
ACCESS = Access.model_validate(
    {
        "service": "ratings",
        "action": "allow",
        "rules": [
            {
                "from": {"principals": ["spiffe://cluster.local/ns/default/sa/reviews"]},
                "to": {"methods": ["GET"], "paths": ["/ratings/*"]},
            }
        ],
    }
)


def _id(service: str) -> SpiffeId:
    return SpiffeId.of("cluster.local", "default", service)


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[str]:
    env = {
        "MESHCONTROL_ADMIN_TOKEN": ADMIN,
        "MESHCONTROL_CA_BOOTSTRAP_TOKENS": json.dumps(TOKENS),
        "MESHCONTROL_CA_PUBLISH_DELAY": "0s",
    }
    with meshcontrol(tmp_path, env, log=tmp_path / "meshcontrol.log") as base:
        yield base
    assert stat_0600(tmp_path / "ca" / "root.key")


def stat_0600(path: Path) -> bool:
    return path.stat().st_mode & 0o777 == 0o600


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _sidecar(
    http: aiohttp.ClientSession, url: str, token: str, service: str
) -> IdentityManager:
    manager = IdentityManager(_id(service), ControlPlaneCA(http, url, token))
    assert await manager.renew()
    return manager


class AuthzEcho(asyncio.Protocol):
    """An inbound app: each line ``METHOD PATH`` is answered ``200`` or ``403``
    by the access policy, with the mTLS peer as the principal."""

    def __init__(self, peer: SpiffeId | None) -> None:
        self.peer = peer
        self.authz = Authz([ACCESS])
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        for line in data.splitlines():
            method, _, path = line.partition(b" ")
            ctx = RequestContext(method, path, [], peer=str(self.peer) if self.peer else None)
            status = b"403" if self.authz.on_request(ctx) is not None else b"200"
            self.transport.write(status + b" " + line + b"\n")


async def test_sidecars_talk_over_mtls_strangers_are_refused_and_access_follows_principals(
    control_plane: str, http: aiohttp.ClientSession
) -> None:
    ratings = await _sidecar(http, control_plane, "tok-ratings", "ratings")
    reviews = await _sidecar(http, control_plane, "tok-reviews", "reviews")
    details = await _sidecar(http, control_plane, "tok-any", "details")
    assert ratings.contexts and reviews.contexts and details.contexts
    refusals = Refusals()
    listener = InboundListener(
        ratings.contexts, lambda: "strict", AuthzEcho, refusals, "cluster.local"
    )
    await listener.start("127.0.0.1", 0)
    try:
        allowed = await dial(listener.port, reviews.contexts, _id("ratings"))
        assert await allowed.ask("GET /ratings/7") == "200 GET /ratings/7"
        assert await allowed.ask("DELETE /ratings/7") == "403 DELETE /ratings/7"
        allowed.close()
        other = await dial(listener.port, details.contexts, _id("ratings"))
        assert await other.ask("GET /ratings/7") == "403 GET /ratings/7"
        other.close()

        # The caller meant to reach details, but ratings answered.
        with pytest.raises(TLSRefused) as wrong:
            await dial(listener.port, reviews.contexts, _id("details"))
        assert wrong.value.reason == "wrong_spiffe_id"

        # No client certificate, or one from another CA: refused at the handshake.
        bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        bare.check_hostname, bare.verify_mode = False, ssl.CERT_NONE
        stranger = PKI().contexts("reviews").client
        stranger.verify_mode = ssl.CERT_NONE
        for ctx in (bare, stranger, None):
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port, ssl=ctx)
            try:
                writer.write(b"GET /ratings/7\n")
                async with asyncio.timeout(5):
                    assert await reader.read() == b""
            except (ssl.SSLError, ConnectionResetError):
                pass  # TLS 1.3: the refusal arrives as an alert on the first read
            finally:
                writer.close()
        reasons = ("no_client_certificate", "unknown_ca", "plaintext_on_strict")
        for _ in range(500):
            if all(refusals.total(reason) for reason in reasons):
                break
            await asyncio.sleep(0.01)
        # (The refused wrong-ID dial also shows here, as the client hanging up.)
        assert {reason: refusals.total(reason) for reason in reasons} == dict.fromkeys(reasons, 1)
    finally:
        await listener.close()


async def test_a_root_rotation_through_the_control_plane_under_load_loses_no_request(
    control_plane: str, http: aiohttp.ClientSession
) -> None:
    ratings = await _sidecar(http, control_plane, "tok-ratings", "ratings")
    reviews = await _sidecar(http, control_plane, "tok-reviews", "reviews")
    assert ratings.contexts and reviews.contexts
    client_contexts = reviews.contexts
    listener = InboundListener(
        ratings.contexts,
        lambda: "strict",
        lambda peer: AuthzEcho(peer),
        Refusals(),
        "cluster.local",
    )
    await listener.start("127.0.0.1", 0)
    load = Load(listener.port, lambda: client_contexts, _id("ratings"))
    running = asyncio.create_task(load.run())
    try:
        await load.reach(5)
        first_serial = ratings.contexts.material.info.serial
        assert await ratings.renew()  # a plain renewal first
        await load.reach(5)
        rotate = await http.post(
            f"{control_plane}/v1/ca/rotate", headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert rotate.status == 200
        # Both sidecars learn the new root before either meets a cert it signed.
        assert await ratings.refresh_bundle() and await reviews.refresh_bundle()
        await load.reach(5)
        assert await ratings.renew()
        await load.reach(5)
        assert await reviews.renew()
        await load.reach(5)
    finally:
        load.stopping = True
        await running
        await listener.close()
    assert load.failures == []
    assert ratings.contexts.material.info.serial != first_serial
    assert len(ratings.contexts.describe(time.time())["trust_bundle"]) == 2
    assert load.ok >= 25
