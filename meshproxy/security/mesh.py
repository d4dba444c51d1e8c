"""The sidecar's mesh TLS in force: who we are, which peers get mTLS, and how
our own inbound side treats plaintext — what the data path asks per connection.

How this works.  ``MeshTLS`` is built once per worker from the bootstrap's
``security`` block and the ``TLSContexts`` of the workload's identity (the
``IdentityManager``'s, or fixed files), and re-read from each snapshot the
runtime accepts (``update``): the services whose policy turns TLS on
(``strict`` or ``permissive``, or the mesh-wide ``security.mode`` when the
policy says nothing) map to the SPIFFE ID their servers must present
(``expected``); the node's own service's mode is what ``inbound_mode`` says.
Both are plain lookups, so the data path pays a dict ``get`` per new upstream
try and nothing when security is off (it then holds no ``MeshTLS``).

Outbound traffic to a TLS service goes to the endpoints of that service as the
snapshot lists them: with TLS on they must be the peers' *inbound* listeners
(their sidecars), not the applications behind them.

``source_for`` turns the bootstrap into the certificate source (the control
plane's CA with a bootstrap token, or files).  Nothing here touches a socket.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp

from meshproxy.config.bootstrap import Bootstrap
from meshproxy.config.security import Security, TLSMode
from meshproxy.config.snapshot import Snapshot
from meshproxy.security.contexts import Material, TLSContexts
from meshproxy.security.identity import ControlPlaneCA, IdentityManager, RenewalPlan
from meshproxy.security.refusals import Refusals
from meshproxy.security.spiffe import SpiffeId
from meshproxy.security.x509 import CertificateError


class MeshTLS:
    """What the data path reads: ``contexts`` (current at each new connection),
    ``expected`` (service -> SpiffeId, TLS services only), ``inbound_mode()``."""

    __slots__ = (
        "contexts",
        "expected",
        "identity",
        "local_mode",
        "refusals",
        "security",
    )

    def __init__(
        self,
        security: Security,
        identity: SpiffeId,
        contexts: TLSContexts,
        snapshot: Snapshot,
        refusals: Refusals | None = None,
    ) -> None:
        self.security = security
        self.identity = identity
        self.contexts = contexts
        self.refusals = refusals if refusals is not None else Refusals()
        self.expected: dict[str, SpiffeId] = {}
        self.local_mode: TLSMode = security.mode
        self.update(snapshot)

    @property
    def trust_domain(self) -> str:
        return self.security.trust_domain

    def update(self, snapshot: Snapshot) -> None:
        """Take the modes of a new snapshot; connections already open keep theirs."""
        default = self.security.mode
        modes: dict[str, TLSMode] = {}
        for policy in snapshot.policies:
            if policy.tls.mode is not None:
                modes[policy.service] = policy.tls.mode
        domain, namespace = self.security.trust_domain, self.security.namespace
        self.expected = {
            name: SpiffeId.of(domain, namespace, name)
            for name in snapshot.services
            if modes.get(name, default) != "disable"
        }
        self.local_mode = modes.get(self.identity.service, default)

    def inbound_mode(self) -> TLSMode:
        return self.local_mode


def identity_of(boot: Bootstrap) -> SpiffeId:
    sec = boot.security
    return SpiffeId.of(sec.trust_domain, sec.namespace, boot.node.service)


def bootstrap_token(security: Security) -> str | None:
    if security.bootstrap_token is not None:
        return security.bootstrap_token.get_secret_value()
    if security.bootstrap_token_file is not None:
        try:
            return security.bootstrap_token_file.read_text().strip()
        except OSError as exc:
            raise CertificateError(f"cannot read the bootstrap token: {exc}") from None
    return None


def files_material(security: Security) -> Material | None:
    """The material of a file-based identity, or None when it comes from a CA."""
    if security.cert_file is None:
        return None
    assert security.key_file is not None and security.bundle_file is not None
    return Material.from_files(
        Path(security.cert_file), Path(security.key_file), Path(security.bundle_file)
    )


def manager_for(boot: Bootstrap, session: aiohttp.ClientSession) -> IdentityManager:
    """An identity manager for the control plane's CA (``ca_url``, else the
    control plane's URL); ``CertificateError`` when neither is configured."""
    sec = boot.security
    url = sec.ca_url or (boot.control_plane.url if boot.control_plane is not None else None)
    if url is None:
        raise CertificateError(
            "security needs ca_url (or a control_plane) or cert/key/bundle files"
        )
    token = bootstrap_token(sec)
    if token is None:
        raise CertificateError("security needs bootstrap_token or bootstrap_token_file for the CA")
    plan = RenewalPlan(fraction=sec.renew_fraction, bundle_refresh=sec.bundle_refresh)
    return IdentityManager(identity_of(boot), ControlPlaneCA(session, url, token), plan)
