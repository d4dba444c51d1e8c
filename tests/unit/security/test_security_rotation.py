"""Certificate and root rotation under steady load, at the TLS-server level:
new connections get the new material, open ones keep theirs, nothing fails."""

from __future__ import annotations

import asyncio

from meshproxy.security.contexts import Material, TLSContexts
from tests.unit.security.pki import DAY, PKI
from tests.unit.security.tls_peers import Load, dial, start_echo


def _rebundle(contexts: TLSContexts, bundle: bytes) -> None:
    m = contexts.material
    contexts.update(Material.of(m.chain, m.key, bundle))


async def test_leaf_and_root_rotation_under_load_lose_no_request() -> None:
    pki = PKI()
    server = pki.contexts("ratings")
    client = pki.contexts("reviews")
    listener = await start_echo(server)
    load = Load(listener.port, lambda: client, pki.identity("ratings"))
    running = asyncio.create_task(load.run())
    try:
        kept = await dial(listener.port, client, pki.identity("ratings"))
        first = await kept.ask("before")
        await load.reach(5)

        # 1. Both leaves renewed under the same root.
        server.update(pki.material("ratings"))
        client.update(pki.material("reviews"))
        await load.reach(5)

        # 2. A new root: trusted everywhere first, then it signs.
        # The CA's clock is stepped by hand; certificates are signed at the
        # real time (pki.now) so the handshakes, which use the real clock, take them.
        now = pki.now
        pki.ca.begin_rotation(now, 600.0, pki.settings)
        both = pki.ca.trust_bundle(now)
        _rebundle(server, both)
        _rebundle(client, both)
        await load.reach(5)
        assert pki.ca.advance(now + 600)
        server.update(pki.material("ratings"))
        await load.reach(5)  # new-root server, old-root client: both roots trusted
        client.update(pki.material("reviews"))
        await load.reach(5)

        # 3. The old root retires once its certificates have expired.
        assert pki.ca.advance(now + 600 + DAY)
        only_new = pki.ca.trust_bundle(now + 600 + DAY)
        _rebundle(server, only_new)
        _rebundle(client, only_new)
        await load.reach(5)

        # The connection opened before any of it still works with its old certificate.
        last = await kept.ask("after")
        assert first.split(" ")[1] == last.split(" ")[1]
        kept.close()
    finally:
        load.stopping = True
        await running
        await listener.close()
    assert load.failures == []
    assert load.ok >= 30
    assert len(load.served) >= 3  # first, renewed, new-root serials all served
    assert server.generation == client.generation == 5
