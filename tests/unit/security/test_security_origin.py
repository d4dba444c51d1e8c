"""``open_to``: the connections the sidecar opens on its own (mirrors, health
checks, L4) are mTLS to a service the mesh turns TLS on for, checked against
that service's SPIFFE ID, and plaintext otherwise."""

from __future__ import annotations

import pytest

from meshproxy.config import parse_bootstrap
from meshproxy.security.handshake import InboundListener, open_to
from meshproxy.security.mesh import MeshTLS
from meshproxy.security.refusals import TLSRefused
from tests.unit.security.pki import PKI
from tests.unit.security.tls_peers import Client, start_echo

BOOT = parse_bootstrap(
    """
node: {id: r1, service: reviews}
security: {mode: strict, bootstrap_token: t, ca_url: "http://127.0.0.1:1"}
snapshot:
  services:
    ratings: {endpoints: [{address: 127.0.0.1, port: 1}]}
    details: {endpoints: [{address: 127.0.0.1, port: 2}]}
    legacy: {endpoints: [{address: 127.0.0.1, port: 3}]}
  policies:
    - {service: legacy, tls: {mode: disable}}
"""
)
REVIEWS = "spiffe://cluster.local/ns/default/sa/reviews"


@pytest.fixture
def pki() -> PKI:
    return PKI()


@pytest.fixture
def mesh(pki: PKI) -> MeshTLS:
    return MeshTLS(BOOT.security, pki.identity("reviews"), pki.contexts("reviews"), BOOT.snapshot)


async def _ask(service: str, mesh: MeshTLS | None, server: InboundListener) -> str:
    _, client = await open_to(service, mesh, Client, "127.0.0.1", server.port, 5.0)
    try:
        return await client.ask("hi")
    finally:
        client.close()


async def test_a_tls_service_is_reached_over_mtls_with_our_identity(
    pki: PKI, mesh: MeshTLS
) -> None:
    # ratings' sidecar, PERMISSIVE: it would take plaintext too, and says which it got.
    server = await start_echo(pki.contexts("ratings"), mode="permissive")
    try:
        answer = await _ask("ratings", mesh, server)
    finally:
        await server.close()
    assert answer.startswith(f"{REVIEWS} ")
    assert answer.endswith(" hi")
    assert mesh.refusals.total() == 0


async def test_a_service_with_tls_disabled_or_security_off_is_reached_in_plaintext(
    pki: PKI, mesh: MeshTLS
) -> None:
    server = await start_echo(pki.contexts("ratings"), mode="permissive")
    try:
        disabled = await _ask("legacy", mesh, server)
        off = await _ask("ratings", None, server)
    finally:
        await server.close()
    assert disabled == off == "- plain hi"


async def test_a_peer_with_another_services_identity_is_refused_and_counted(
    pki: PKI, mesh: MeshTLS
) -> None:
    server = await start_echo(pki.contexts("ratings"))
    try:
        with pytest.raises(TLSRefused) as refused:
            await _ask("details", mesh, server)
    finally:
        await server.close()
    assert refused.value.reason == "wrong_spiffe_id"
    assert dict(mesh.refusals.counts) == {("outbound", "wrong_spiffe_id"): 1}
