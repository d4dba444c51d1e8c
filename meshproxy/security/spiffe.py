"""SPIFFE identities: ``spiffe://<trust-domain>/ns/<namespace>/sa/<service>``.

How this works.  A workload's identity is the one URI SAN of its X.509-SVID.
Python's ``ssl`` verifies the chain and the validity dates but not URI SANs, so
after the handshake ``peer_identity`` reads the SAN from ``getpeercert()`` and
``SpiffeId.parse`` checks it against the SPIFFE spec (lower-case trust domain,
non-empty path segments of ``[A-Za-z0-9._-]``, no ``.``/``..``).  The peer's
URI (``str(peer)``) is the principal that access policies (``policy.authz``
matches it) and rate-limit keys use.

Shared with the control plane's CA (``control.ca`` imports it), so both sides
build and parse identities with one set of rules.  No sockets, no clocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

SCHEME = "spiffe://"
MAX_ID_LENGTH = 2048
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]{1,255}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")


class IdentityError(ValueError):
    """A SPIFFE ID that is malformed, or not the shape the mesh issues."""


def check_trust_domain(domain: str) -> str:
    if not _TRUST_DOMAIN.match(domain):
        raise IdentityError(f"invalid trust domain {domain!r}: use lower-case a-z 0-9 . _ -")
    return domain


def check_segment(what: str, value: str) -> str:
    if not _SEGMENT.match(value) or value in (".", ".."):
        raise IdentityError(f"invalid {what} {value!r}: use A-Z a-z 0-9 . _ -")
    return value


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A mesh workload identity.  ``str()`` gives the URI."""

    trust_domain: str
    namespace: str
    service: str

    @classmethod
    def of(cls, trust_domain: str, namespace: str, service: str) -> SpiffeId:
        return cls(
            check_trust_domain(trust_domain),
            check_segment("namespace", namespace),
            check_segment("service", service),
        )

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        if len(uri) > MAX_ID_LENGTH:
            raise IdentityError("a SPIFFE ID is at most 2048 bytes")
        if not uri.startswith(SCHEME):
            raise IdentityError(f"not a SPIFFE ID (no spiffe:// scheme): {uri[:80]!r}")
        domain, slash, path = uri[len(SCHEME) :].partition("/")
        if not slash:
            raise IdentityError(f"SPIFFE ID without a workload path: {uri[:80]!r}")
        parts = path.split("/")
        for part in parts:
            check_segment("path segment", part)
        if len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa":
            raise IdentityError(f"not a mesh workload ID (/ns/<ns>/sa/<service>): {uri[:80]!r}")
        return cls.of(domain, parts[1], parts[3])

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service}"

    def __str__(self) -> str:
        return self.uri


def uri_sans(peercert: dict[str, Any] | None) -> list[str]:
    """The URI SANs of a certificate as ``SSLObject.getpeercert()`` returns it."""
    if not peercert:
        return []
    return [value for kind, value in peercert.get("subjectAltName", ()) if kind == "URI"]


def peer_identity(peercert: dict[str, Any] | None) -> SpiffeId:
    """The SPIFFE ID of a verified peer certificate.  An SVID carries exactly
    one URI SAN; zero or several are refused rather than guessed between."""
    uris = uri_sans(peercert)
    if not uris:
        raise IdentityError("the peer certificate has no SPIFFE ID (no URI SAN)")
    if len(uris) > 1:
        raise IdentityError(f"the peer certificate has {len(uris)} URI SANs; an SVID has one")
    return SpiffeId.parse(uris[0])
