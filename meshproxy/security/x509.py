"""X.509 material of a workload: its key, its CSR, and facts read from certificates.

How this works.  Keys are ECDSA P-256 (fast to make, small handshakes, what
Istio and SPIRE default to).  A CSR carries the requested SPIFFE ID as its one
URI SAN; the CA decides the identity from the bootstrap token anyway, the SAN
only lets it refuse a mismatch with a clear reason.  ``CertInfo`` is what the
rest of the sidecar needs of a certificate (identity, serial, validity) as
plain values, so that schedules and the admin view need no cryptography types.

No sockets, no clocks: times come in as ``now`` (seconds since the epoch).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshproxy.security.spiffe import IdentityError, SpiffeId

PrivateKey = ec.EllipticCurvePrivateKey
_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.S)


class CertificateError(ValueError):
    """Material that cannot be used: unreadable PEM, no identity, a key that does not fit."""


def generate_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(pem: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"unreadable private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError("the private key is not an EC key")
    return key


def build_csr(key: PrivateKey, identity: SpiffeId) -> bytes:
    """A PEM CSR asking for ``identity`` (URI SAN), signed by ``key``."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshproxy")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def split_pem(chain: bytes) -> list[bytes]:
    """The certificate blocks of a PEM bundle, in order."""
    return _PEM_BLOCK.findall(chain)


def load_certificates(chain: bytes) -> list[x509.Certificate]:
    blocks = split_pem(chain)
    if not blocks:
        raise CertificateError("no PEM certificate found")
    try:
        return [x509.load_pem_x509_certificate(block) for block in blocks]
    except ValueError as exc:
        raise CertificateError(f"unreadable certificate: {exc}") from None


def certificate_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(san.value.get_values_for_type(x509.UniformResourceIdentifier))


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What the sidecar needs of a leaf certificate."""

    identity: SpiffeId
    serial: str  # hex, as openssl prints it
    not_before: float
    not_after: float

    @property
    def lifetime(self) -> float:
        return self.not_after - self.not_before

    @classmethod
    def of(cls, cert: x509.Certificate) -> CertInfo:
        uris = certificate_uris(cert)
        if len(uris) != 1:
            raise CertificateError(f"an SVID has exactly one URI SAN, this one has {len(uris)}")
        try:
            identity = SpiffeId.parse(uris[0])
        except IdentityError as exc:
            raise CertificateError(str(exc)) from None
        return cls(
            identity=identity,
            serial=format(cert.serial_number, "x"),
            not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(),
        )

    @classmethod
    def of_chain(cls, chain: bytes) -> CertInfo:
        return cls.of(load_certificates(chain)[0])


def key_matches(key: PrivateKey, chain: bytes) -> bool:
    """Whether the chain's leaf certifies ``key``'s public key."""
    leaf = load_certificates(chain)[0]
    ours = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return ours == theirs
