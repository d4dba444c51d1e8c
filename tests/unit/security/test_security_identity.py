"""The identity manager: first certificate, renewal at 2/3 of the lifetime,
retries that keep the old certificate serving, and trust-bundle updates."""

from __future__ import annotations

import pytest
from cryptography import x509

from meshproxy.security.identity import IdentityManager, Issued, IssueError, RenewalPlan
from meshproxy.security.spiffe import SpiffeId
from tests.unit.security.pki import DAY, PKI


class Stop(Exception):
    pass


class FakeTime:
    def __init__(self, now: float, limit: int) -> None:
        self.now = now
        self.sleeps: list[float] = []
        self.limit = limit

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if len(self.sleeps) == self.limit:
            raise Stop
        self.sleeps.append(seconds)
        self.now += seconds


class CA:
    """The test PKI as a certificate source; ``down`` makes it fail."""

    def __init__(self, pki: PKI, time: FakeTime) -> None:
        self.pki = pki
        self.time = time
        self.down = False
        self.issued_at: list[float] = []

    async def issue(self, identity: SpiffeId, csr: bytes) -> Issued:
        if self.down:
            raise IssueError("the CA refused: 503")
        signed = self.pki.ca.sign(csr, identity, self.time.now)
        self.issued_at.append(self.time.now)
        return Issued(signed.chain, self.pki.ca.trust_bundle(self.time.now))

    async def bundle(self) -> bytes:
        if self.down:
            raise IssueError("no trust bundle")
        return self.pki.ca.trust_bundle(self.time.now)


def _manager(limit: int, plan: RenewalPlan | None = None) -> tuple[IdentityManager, CA, FakeTime]:
    pki = PKI()
    time = FakeTime(pki.now, limit)
    ca = CA(pki, time)
    manager = IdentityManager(
        pki.identity("reviews"),
        ca,
        plan or RenewalPlan(bundle_refresh=10 * DAY),
        time.clock,
        time.sleep,
    )
    return manager, ca, time


async def test_the_certificate_is_renewed_at_two_thirds_of_its_lifetime() -> None:
    manager, ca, _ = _manager(limit=2)
    with pytest.raises(Stop):
        await manager.run()
    # Counted from its arrival: the minute of backdating for clock skew is
    # not part of the lifetime the renewal schedule divides.
    step = DAY * 2 / 3
    start = ca.issued_at[0]
    assert ca.issued_at == pytest.approx([start, start + step, start + 2 * step], abs=1.0)
    assert manager.renewals == 3
    assert manager.contexts is not None and manager.contexts.generation == 3


async def test_a_failed_renewal_keeps_the_old_certificate_and_retries_with_backoff() -> None:
    manager, ca, time = _manager(limit=4, plan=RenewalPlan(retry_base=2.0, bundle_refresh=10 * DAY))
    assert await manager.renew()
    assert manager.contexts is not None
    first = manager.contexts.material
    server_before = manager.contexts.server
    ca.down = True
    time.now = RenewalPlan().renew_at(first, manager.received_at)
    with pytest.raises(Stop):
        await manager.run()
    assert time.sleeps == [2.0, 4.0, 8.0, 16.0]
    assert manager.failures == 5
    assert manager.contexts.material is first and manager.contexts.server is server_before
    ca.down = False
    assert await manager.renew()
    assert manager.contexts.material.info.serial != first.info.serial
    assert manager.failures == 0


def test_a_backdated_short_lived_certificate_is_renewed_at_two_thirds_after_it_came() -> None:
    pki = PKI()
    signed = pki.material("reviews", ttl=6.0)
    received = signed.info.not_after - 6.0
    assert signed.info.not_before < received - 30  # backdated for clock skew
    assert RenewalPlan().renew_at(signed, received) == pytest.approx(received + 4.0)
    assert RenewalPlan().renew_at(signed) < received  # what counting from not_before gives


async def test_retries_close_to_expiry_come_faster_than_the_backoff() -> None:
    plan = RenewalPlan(retry_base=600.0, retry_max=3600.0)
    manager, _, _ = _manager(limit=0, plan=plan)
    assert await manager.renew()
    material = manager.material
    assert material is not None
    near_end = material.info.not_after - 400.0
    assert plan.retry_at(near_end, 3, material) == pytest.approx(near_end + 100.0)


async def test_a_new_root_in_the_bundle_is_taken_into_use_without_a_new_certificate() -> None:
    manager, ca, time = _manager(limit=0)
    assert await manager.renew()
    assert not await manager.refresh_bundle()
    ca.pki.ca.begin_rotation(time.now, 3600.0, ca.pki.settings)
    serial = manager.material.info.serial if manager.material else None
    assert await manager.refresh_bundle()
    assert manager.material is not None
    assert manager.material.info.serial == serial
    assert manager.contexts is not None
    assert len(manager.contexts.describe(time.now)["trust_bundle"]) == 2


async def test_a_certificate_for_another_identity_is_not_taken() -> None:
    manager, ca, _ = _manager(limit=0)

    async def wrong(identity: SpiffeId, csr: bytes) -> Issued:
        # A CA that ignores what the CSR asked for.
        unchecked = staticmethod(lambda pem, _: x509.load_pem_x509_csr(pem))
        ca.pki.ca._check_csr = unchecked  # type: ignore[method-assign]
        signed = ca.pki.ca.sign(csr, ca.pki.identity("payments"), ca.time.now)
        return Issued(signed.chain, ca.pki.ca.trust_bundle(ca.time.now))

    ca.issue = wrong  # type: ignore[method-assign]
    assert not await manager.renew()
    assert manager.contexts is None and manager.failures == 1
