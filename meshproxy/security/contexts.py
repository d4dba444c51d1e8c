"""TLS contexts of the mesh: built from a workload's material, swapped on rotation.

How this works.  ``Material`` is one consistent set: the SVID chain, its key
and the trust bundle (every root trusted now, old and new during a root
rotation).  ``TLSContexts`` holds the server and client ``ssl.SSLContext``
built from the current material; ``update`` builds a new pair first and then
replaces both references in one step.  An ``SSLObject`` keeps the context it
was made with, so connections already open go on with the old certificate
while each new one (which reads ``contexts.server`` / ``.client`` when it
starts) gets the new one: rotation drops nothing.

Both sides: TLS 1.2 minimum (1.3 preferred), ECDHE with AES-GCM or ChaCha20
only for 1.2, no compression or renegotiation, ALPN ``http/1.1``, the peer's
certificate required and verified against the bundle with X.509 strict
checks.  Host names are not checked: the identity is the SPIFFE ID, which the
caller verifies after the handshake (``meshproxy.security.handshake``).

What this room must not do: read clocks or schedule renewals (that is
``identity.py``), or touch a transport.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshproxy.security.x509 import (
    CertificateError,
    CertInfo,
    key_matches,
    load_certificates,
    load_key,
)

ALPN = ["http/1.1"]
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


@dataclass(frozen=True)
class Material:
    chain: bytes  # PEM, leaf first
    key: bytes  # PEM, PKCS#8
    bundle: bytes  # PEM roots
    info: CertInfo

    @classmethod
    def of(cls, chain: bytes, key: bytes, bundle: bytes) -> Material:
        """Check that the parts fit together; raise ``CertificateError`` if not."""
        info = CertInfo.of_chain(chain)
        if not key_matches(load_key(key), chain):
            raise CertificateError("the private key does not match the certificate")
        load_certificates(bundle)
        return cls(chain, key, bundle, info)

    @classmethod
    def from_files(cls, cert_file: Path, key_file: Path, bundle_file: Path) -> Material:
        try:
            return cls.of(cert_file.read_bytes(), key_file.read_bytes(), bundle_file.read_bytes())
        except OSError as exc:
            raise CertificateError(f"cannot read TLS material: {exc}") from None


def _harden(ctx: ssl.SSLContext, material: Material) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.set_alpn_protocols(ALPN)
    ctx.load_verify_locations(cadata=material.bundle.decode("ascii"))
    # ssl loads a certificate and key from files only: write them into a
    # private directory just for the call and remove them at once.
    with tempfile.TemporaryDirectory(prefix="meshproxy-tls-") as tmp:
        cert_path = os.path.join(tmp, "chain.pem")
        key_path = os.path.join(tmp, "key.pem")
        for path, data in ((cert_path, material.chain), (key_path, material.key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


def server_context(material: Material) -> ssl.SSLContext:
    """For an inbound listener: requires and verifies the client's certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    return _harden(ctx, material)


def client_context(material: Material) -> ssl.SSLContext:
    """For originating mTLS: presents our SVID, verifies the server's chain."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # the SPIFFE ID is checked after the handshake instead
    return _harden(ctx, material)


class TLSContexts:
    """The contexts new connections use now.  Read ``server``/``client`` at the
    start of each connection, never keep them: ``update`` replaces them."""

    __slots__ = ("client", "generation", "material", "server")

    def __init__(self, material: Material) -> None:
        self.material = material
        self.server = server_context(material)
        self.client = client_context(material)
        self.generation = 1

    def update(self, material: Material) -> None:
        # Build both before replacing either, so a failure leaves the old pair whole.
        server, client = server_context(material), client_context(material)
        self.material, self.server, self.client = material, server, client
        self.generation += 1

    def describe(self, now: float) -> dict[str, Any]:
        """The admin ``/certs`` view: the certificate in use and the roots trusted."""
        info = self.material.info
        roots = load_certificates(self.material.bundle)
        return {
            "identity": info.identity.uri,
            "serial": info.serial,
            "not_before": info.not_before,
            "not_after": info.not_after,
            "expires_in": round(info.not_after - now, 3),
            "generation": self.generation,
            "trust_bundle": [
                {
                    "subject": root.subject.rfc4514_string(),
                    "serial": format(root.serial_number, "x"),
                    "not_after": root.not_valid_after_utc.timestamp(),
                }
                for root in roots
            ],
        }
