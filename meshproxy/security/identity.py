"""The sidecar's workload identity: obtain an SVID, renew it at 2/3 of its life,
follow the trust bundle, and swap the TLS contexts without dropping a connection.

How this works.  ``RenewalPlan`` is the sans-IO part: given the certificate in
use, when to renew (``not_before + fraction * lifetime``), when to try again
after a failure (exponential, but never later than a quarter of the time
left), when to look at the trust bundle again.  ``IdentityManager`` is the
glue: a fresh key and CSR per renewal, the ``CertificateSource`` (the control
plane's CA over HTTP, ``ControlPlaneCA``), and ``TLSContexts.update`` once the
new material is in hand.  Until then the old certificate keeps serving, and a
failed renewal changes nothing but the next attempt time.  The clock and the
sleep are injected, so tests run the whole schedule without waiting.

What this room must not do: hold a socket of the data path, or decide who may
call whom (that is the access policy's, given the peer identity).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from meshproxy.security.contexts import Material, TLSContexts
from meshproxy.security.spiffe import SpiffeId
from meshproxy.security.x509 import CertificateError, build_csr, generate_key, key_pem

log = logging.getLogger("meshproxy.security")


class IssueError(Exception):
    """The CA did not give us a certificate; the message says why."""


@dataclass(frozen=True)
class Issued:
    chain: bytes
    bundle: bytes


class CertificateSource(Protocol):
    async def issue(self, identity: SpiffeId, csr: bytes) -> Issued: ...

    async def bundle(self) -> bytes: ...


@dataclass(frozen=True)
class RenewalPlan:
    fraction: float = 2 / 3
    retry_base: float = 1.0
    retry_max: float = 60.0
    bundle_refresh: float = 60.0

    def renew_at(self, material: Material, received_at: float | None = None) -> float:
        """``fraction`` of the way from when the certificate became usable to
        its end.  CAs backdate ``not_before`` for clock skew (ours by a
        minute): counted from there, a short-lived certificate would be due
        for renewal the moment it arrives, so the start is the later of
        ``not_before`` and ``received_at``."""
        info = material.info
        start = info.not_before if received_at is None else max(info.not_before, received_at)
        return start + (info.not_after - start) * self.fraction

    def retry_at(self, now: float, failures: int, material: Material | None) -> float:
        delay = min(self.retry_max, self.retry_base * 2.0 ** max(0, failures - 1))
        if material is not None:
            # Closer to expiry, try more often: never wait past a quarter of what is left.
            delay = min(delay, max(0.1, (material.info.not_after - now) / 4))
        return now + delay


class IdentityManager:
    def __init__(
        self,
        identity: SpiffeId,
        source: CertificateSource,
        plan: RenewalPlan | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.identity = identity
        self.source = source
        self.plan = plan or RenewalPlan()
        self.clock = clock
        self.sleep = sleep
        self.contexts: TLSContexts | None = None
        self.failures = 0
        self.renewals = 0
        self.received_at: float | None = None  # when the certificate in use came

    @property
    def material(self) -> Material | None:
        return self.contexts.material if self.contexts else None

    async def renew(self) -> bool:
        """Get a certificate for a fresh key and put it in use; False (and the
        old one kept) when the CA or the answer fails."""
        key = generate_key()
        try:
            issued = await self.source.issue(self.identity, build_csr(key, self.identity))
            material = Material.of(issued.chain, key_pem(key), issued.bundle)
            if material.info.identity != self.identity:
                raise CertificateError(f"the CA issued {material.info.identity}")
        except (TimeoutError, IssueError, CertificateError, OSError) as exc:
            self.failures += 1
            log.warning("certificate renewal failed (%d in a row): %s", self.failures, exc)
            return False
        self._use(material)
        self.received_at = self.clock()
        self.failures = 0
        self.renewals += 1
        log.info("certificate in use: %s serial=%s", self.identity, material.info.serial)
        return True

    async def refresh_bundle(self) -> bool:
        """Take a changed trust bundle into use; True if it changed."""
        current = self.material
        if current is None:
            return False
        try:
            bundle = await self.source.bundle()
            if bundle == current.bundle:
                return False
            material = Material.of(current.chain, current.key, bundle)
        except (TimeoutError, IssueError, CertificateError, OSError) as exc:
            log.warning("trust bundle refresh failed: %s", exc)
            return False
        self._use(material)
        log.info("trust bundle updated: %d bytes", len(bundle))
        return True

    def _use(self, material: Material) -> None:
        if self.contexts is None:
            self.contexts = TLSContexts(material)
        else:
            self.contexts.update(material)

    def next_wake(self, now: float, bundle_at: float) -> float:
        material = self.material
        if self.failures:
            return min(self.plan.retry_at(now, self.failures, material), bundle_at)
        if material is None:
            return now
        return min(self.plan.renew_at(material, self.received_at), bundle_at)

    async def run(self) -> None:
        """Keep the identity fresh until cancelled."""
        bundle_at = self.clock() + self.plan.bundle_refresh
        while True:
            now = self.clock()
            wake = self.next_wake(now, bundle_at)
            if wake > now:
                await self.sleep(wake - now)
                now = self.clock()
            material = self.material
            due = material is None or now >= self.plan.renew_at(material, self.received_at)
            if due or self.failures:
                await self.renew()
            if now >= bundle_at:
                await self.refresh_bundle()
                bundle_at = now + self.plan.bundle_refresh


class ControlPlaneCA:
    """The control plane's CA over HTTP: ``POST /v1/certificates`` with the
    bootstrap token, ``GET /v1/trust-bundle``."""

    def __init__(
        self, session: aiohttp.ClientSession, url: str, token: str, timeout: float = 10.0
    ) -> None:
        self.session = session
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def issue(self, identity: SpiffeId, csr: bytes) -> Issued:
        body = {"csr": csr.decode(), "namespace": identity.namespace, "service": identity.service}
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            async with self.session.post(
                f"{self.url}/v1/certificates", json=body, headers=headers, timeout=self.timeout
            ) as response:
                data = await response.json(content_type=None)
        except (aiohttp.ClientError, ValueError) as exc:
            raise IssueError(f"the CA is unreachable or answered garbage: {exc}") from None
        if response.status != 200 or not isinstance(data, dict):
            reason = data.get("error") if isinstance(data, dict) else data
            raise IssueError(f"the CA refused: {response.status} {reason}")
        try:
            return Issued(data["certificate_chain"].encode(), data["trust_bundle"].encode())
        except (KeyError, AttributeError) as exc:
            raise IssueError(f"the CA's answer lacks {exc}") from None

    async def bundle(self) -> bytes:
        try:
            async with self.session.get(
                f"{self.url}/v1/trust-bundle", timeout=self.timeout
            ) as response:
                data = await response.json(content_type=None)
            bundle: bytes = data["trust_bundle"].encode()
        except (aiohttp.ClientError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IssueError(f"no trust bundle from the CA: {exc}") from None
        return bundle
