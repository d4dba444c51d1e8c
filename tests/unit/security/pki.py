"""A small PKI for tests: a mesh CA and workload material signed by it."""

from __future__ import annotations

import time

from control.ca import CASettings, CertificateAuthority, new_signer
from meshproxy.security.contexts import Material, TLSContexts
from meshproxy.security.spiffe import SpiffeId
from meshproxy.security.x509 import build_csr, generate_key, key_pem

TRUST_DOMAIN = "cluster.local"
DAY = 86400.0


class PKI:
    def __init__(
        self, trust_domain: str = TRUST_DOMAIN, intermediate: bool = False, now: float | None = None
    ) -> None:
        self.now = time.time() if now is None else now
        self.settings = CASettings(trust_domain=trust_domain, intermediate=intermediate)
        self.ca = CertificateAuthority(
            trust_domain, new_signer(trust_domain, self.now, self.settings)
        )

    def identity(self, service: str, namespace: str = "default") -> SpiffeId:
        return SpiffeId.of(self.ca.trust_domain, namespace, service)

    def material(
        self,
        service: str,
        *,
        now: float | None = None,
        ttl: float | None = None,
        bundle: bytes | None = None,
    ) -> Material:
        at = self.now if now is None else now
        key = generate_key()
        identity = self.identity(service)
        issued = self.ca.sign(build_csr(key, identity), identity, at, ttl)
        return Material.of(issued.chain, key_pem(key), bundle or self.ca.trust_bundle(at))

    def contexts(self, service: str, **kwargs: float) -> TLSContexts:
        return TLSContexts(self.material(service, **kwargs))
