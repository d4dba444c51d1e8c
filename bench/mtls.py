"""The mTLS parts of the benchmark: certificates for the two hops, and the
handshake rate (new mTLS connections per second into a sidecar's inbound port).

wrk cannot present a client certificate, and the first hop keeps its mTLS
connections to the second alive, so the handshake rate is measured by this
client: ``concurrency`` asyncio tasks (uvloop) that each open an mTLS
connection, send one ``Connection: close`` request, read the answer and start
over, for ``duration_s``.  The client's own TLS work runs on the same machine:
the figure is a lower bound for the sidecar.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

from control.ca import CASettings, CertificateAuthority, new_signer
from meshproxy.security.contexts import Material, client_context
from meshproxy.security.spiffe import SpiffeId
from meshproxy.security.x509 import build_csr, generate_key, key_pem

TRUST_DOMAIN = "cluster.local"


def write_identities(workdir: Path, services: list[str]) -> dict[str, dict[str, str]]:
    """One CA, and an SVID per service written as files; service -> the
    bootstrap's ``cert_file`` / ``key_file`` / ``bundle_file``."""
    now = time.time()
    settings = CASettings(trust_domain=TRUST_DOMAIN)
    ca = CertificateAuthority(TRUST_DOMAIN, new_signer(TRUST_DOMAIN, now, settings))
    out: dict[str, dict[str, str]] = {}
    for service in services:
        key = generate_key()
        identity = SpiffeId.of(TRUST_DOMAIN, "default", service)
        issued = ca.sign(build_csr(key, identity), identity, now, None)
        files = {
            "cert_file": workdir / f"{service}.crt",
            "key_file": workdir / f"{service}.key",
            "bundle_file": workdir / "bundle.pem",
        }
        files["cert_file"].write_bytes(issued.chain)
        files["key_file"].write_bytes(key_pem(key))
        files["key_file"].chmod(0o600)
        files["bundle_file"].write_bytes(ca.trust_bundle(now))
        out[service] = {name: str(path) for name, path in files.items()}
    return out


def client_ssl(files: dict[str, str]) -> ssl.SSLContext:
    material = Material.from_files(
        Path(files["cert_file"]), Path(files["key_file"]), Path(files["bundle_file"])
    )
    return client_context(material)


async def _one(port: int, ctx: ssl.SSLContext, request: bytes) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        writer.write(request)
        data = await reader.read()
        return data.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()


async def _handshakes(
    port: int, ctx: ssl.SSLContext, host: str, duration_s: float, concurrency: int
) -> tuple[int, int]:
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    loop = asyncio.get_running_loop()
    end = loop.time() + duration_s
    counts = [0, 0]  # ok, failed

    async def worker() -> None:
        while loop.time() < end:
            try:
                ok = await asyncio.wait_for(_one(port, ctx, request), 5.0)
            except (OSError, ssl.SSLError, TimeoutError):
                ok = False
            counts[0 if ok else 1] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts[0], counts[1]


def handshake_rate(
    port: int, files: dict[str, str], host: str, duration_s: float, concurrency: int = 16
) -> tuple[float, int]:
    """(new mTLS connections per second that got a 200, failures) against ``port``."""
    import uvloop

    started = time.monotonic()
    ok, failed = uvloop.run(_handshakes(port, client_ssl(files), host, duration_s, concurrency))
    return ok / (time.monotonic() - started), failed
