"""TLS at the edges: mTLS between two workloads, and each bad input refused at
the handshake, counted under its reason."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from meshproxy.security.contexts import TLSContexts
from meshproxy.security.refusals import Refusals, TLSRefused
from meshproxy.security.spiffe import SpiffeId
from tests.unit.security.pki import DAY, PKI
from tests.unit.security.tls_peers import dial, start_echo, wait_for


@pytest.fixture
def pki() -> PKI:
    return PKI()


async def test_two_workloads_talk_over_mtls_and_each_sees_the_others_identity(pki: PKI) -> None:
    server = await start_echo(pki.contexts("ratings"))
    try:
        client = await dial(server.port, pki.contexts("reviews"), pki.identity("ratings"))
        answer = await client.ask("hello")
        assert answer.startswith("spiffe://cluster.local/ns/default/sa/reviews ")
        assert answer.endswith(" hello")
        ssl_object = client.transport.get_extra_info("ssl_object") if client.transport else None
        assert ssl_object is not None
        assert ssl_object.selected_alpn_protocol() == "http/1.1"
        assert ssl_object.version() in ("TLSv1.2", "TLSv1.3")
        client.close()
    finally:
        await server.close()


async def test_an_intermediate_signed_chain_is_accepted() -> None:
    pki = PKI(intermediate=True)
    server = await start_echo(pki.contexts("ratings"))
    try:
        client = await dial(server.port, pki.contexts("reviews"), pki.identity("ratings"))
        assert (await client.ask("x")).startswith("spiffe://cluster.local/ns/default/sa/reviews")
        client.close()
    finally:
        await server.close()


async def _refused_inbound(pki: PKI, ctx: ssl.SSLContext | None, payload: bytes) -> Refusals:
    """Connect with ``ctx`` (None: plaintext), send ``payload``, and return the
    server's refusals once it counted one; the client must get no answer."""
    refusals = Refusals()
    server = await start_echo(pki.contexts("ratings"), refusals=refusals)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=ctx)
        try:
            writer.write(payload)
            async with asyncio.timeout(5):
                answer = await reader.read()
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            answer = b""  # TLS 1.3: the client learns of the refusal on its first read
        finally:
            writer.close()
        assert answer == b""
        await wait_for(lambda: refusals.total() == 1)
    finally:
        await server.close()
    return refusals


def _client_ctx() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def test_a_client_without_a_certificate_is_refused_on_strict(pki: PKI) -> None:
    refusals = await _refused_inbound(pki, _client_ctx(), b"hello\n")
    assert refusals.counts == {("inbound", "no_client_certificate"): 1}


async def test_a_client_certificate_from_another_ca_is_refused(pki: PKI) -> None:
    # It trusts our root, but its own certificate comes from another CA.
    stranger = TLSContexts(PKI().material("reviews", bundle=pki.ca.trust_bundle(pki.now)))
    refusals = await _refused_inbound(pki, stranger.client, b"hello\n")
    assert refusals.counts == {("inbound", "unknown_ca"): 1}


async def test_an_expired_client_certificate_is_refused(pki: PKI) -> None:
    old = pki.contexts("reviews", now=pki.now - 3 * DAY, ttl=DAY)
    refusals = await _refused_inbound(pki, old.client, b"hello\n")
    assert refusals.counts == {("inbound", "expired"): 1}


async def test_a_plaintext_client_on_a_strict_port_is_refused_at_the_first_byte(
    pki: PKI,
) -> None:
    refusals = await _refused_inbound(pki, None, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert refusals.counts == {("inbound", "plaintext_on_strict"): 1}


async def test_a_peer_of_another_trust_domain_is_refused_inbound(pki: PKI) -> None:
    other = PKI(trust_domain="other.example")
    # Both roots are trusted (federation), but the peer names another domain.
    bundle = pki.ca.trust_bundle(pki.now) + other.ca.trust_bundle(pki.now)
    server_material = pki.material("ratings", bundle=bundle)
    refusals = Refusals()
    server = await start_echo(TLSContexts(server_material), refusals=refusals)
    try:
        ctx = TLSContexts(other.material("reviews", bundle=bundle))
        client = await dial(server.port, ctx, pki.identity("ratings"))
        async with asyncio.timeout(5):
            await client.closed
        assert refusals.counts == {("inbound", "wrong_spiffe_id"): 1}
        assert client.lines.empty()
    finally:
        await server.close()


async def test_permissive_takes_plaintext_without_identity_and_mtls_with_it(pki: PKI) -> None:
    server = await start_echo(pki.contexts("ratings"), mode="permissive")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"plain\n")
        async with asyncio.timeout(5):
            assert await reader.readline() == b"- plain plain\n"
        writer.close()
        client = await dial(server.port, pki.contexts("reviews"), pki.identity("ratings"))
        assert (await client.ask("tls")).startswith("spiffe://cluster.local/ns/default/sa/reviews ")
        client.close()
    finally:
        await server.close()


async def test_a_server_with_the_wrong_spiffe_id_is_refused_outbound(pki: PKI) -> None:
    server = await start_echo(pki.contexts("details"))
    refusals = Refusals()
    try:
        with pytest.raises(TLSRefused) as caught:
            await dial(server.port, pki.contexts("reviews"), pki.identity("ratings"), refusals)
        assert caught.value.reason == "wrong_spiffe_id"
        assert "sa/details" in caught.value.detail
        assert refusals.counts == {("outbound", "wrong_spiffe_id"): 1}
    finally:
        await server.close()


async def test_a_server_from_another_ca_or_expired_is_refused_outbound(pki: PKI) -> None:
    refusals = Refusals()
    for server_ctx, reason in (
        (PKI().contexts("ratings"), "unknown_ca"),
        (pki.contexts("ratings", now=pki.now - 3 * DAY, ttl=DAY), "expired"),
    ):
        server = await start_echo(server_ctx)
        try:
            with pytest.raises(TLSRefused) as caught:
                await dial(server.port, pki.contexts("reviews"), pki.identity("ratings"), refusals)
            assert caught.value.reason == reason
        finally:
            await server.close()
    assert refusals.counts == {("outbound", "unknown_ca"): 1, ("outbound", "expired"): 1}


async def test_a_client_that_never_finishes_the_handshake_is_cut_at_the_timeout(
    pki: PKI,
) -> None:
    refusals = Refusals()
    server = await start_echo(pki.contexts("ratings"), refusals=refusals, handshake_timeout=0.2)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()
        assert refusals.counts == {("inbound", "handshake_timeout"): 1}
    finally:
        await server.close()


async def test_a_connection_closed_before_any_byte_is_not_a_refusal(pki: PKI) -> None:
    refusals = Refusals()
    server = await start_echo(pki.contexts("ratings"), refusals=refusals)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.close()
        await writer.wait_closed()
        client = await dial(server.port, pki.contexts("reviews"), pki.identity("ratings"))
        assert (await client.ask("after")).endswith(" after")
        client.close()
        assert refusals.total() == 0
    finally:
        await server.close()


def test_identity_of_the_test_pki_is_in_the_mesh_shape(pki: PKI) -> None:
    assert pki.identity("ratings") == SpiffeId.parse("spiffe://cluster.local/ns/default/sa/ratings")
