"""The mesh certificate authority: roots, an optional intermediate, SVIDs, rotation.

How this works.  ``CertificateAuthority`` holds the signing authority (the root,
or an intermediate under it) and signs workload CSRs into X.509-SVIDs: one URI
SAN ``spiffe://<td>/ns/<ns>/sa/<service>``, not a CA, usable as TLS client and
server, valid ``cert_ttl`` (24 h by default) and never past its issuer.

Root rotation has three phases, all driven by ``now`` so they are tested
without waiting:

1. ``begin_rotation(now, publish_delay)`` makes the next root (and
   intermediate).  It is trusted at once (it is in ``trust_bundle``) but does
   not sign yet, so every sidecar can learn it before it meets a cert it signed.
2. ``advance(now)`` at ``now >= activate_at`` makes it the signer.  The old root
   stays trusted until every cert it signed has expired (``activate_at +
   cert_ttl``): old and new roots overlap.
3. ``advance`` then drops the old root from the bundle.

``CADirectory`` is the only part that touches files: keys are written 0600
(and a key file that others can read is refused on load), certs and the
rotation state beside them.  The authority itself reads no clock and no file.
With several control-plane replicas, give them the same root (and
intermediate) files, or each would make its own root at first start.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import BeforeValidator, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from meshproxy.config.types import parse_duration
from meshproxy.security.spiffe import SpiffeId, check_trust_domain
from meshproxy.security.x509 import (
    CertificateError,
    CertInfo,
    PrivateKey,
    generate_key,
    key_pem,
    load_certificates,
    load_key,
)

DAY = 86400.0
CLOCK_SKEW = 60.0  # not_before is backdated this much for peers whose clocks run behind
MAX_CSR_BYTES = 16 * 1024


def _seconds(value: object) -> object:
    return value if isinstance(value, float) else parse_duration(value)


# A duration text ("24h") from the environment; the defaults below are seconds.
Duration = Annotated[float, BeforeValidator(_seconds)]


class CAError(ValueError):
    """A CA that cannot start or a request it refuses; the message says why."""


class CASettings(BaseSettings):
    """``MESHCONTROL_CA_*``.  Without root files the CA makes its own root at
    first start in ``dir`` (default ``<data_dir>/ca``) and reuses it after."""

    model_config = SettingsConfigDict(env_prefix="MESHCONTROL_CA_", extra="ignore")

    trust_domain: str = Field(default="cluster.local", pattern=r"^[a-z0-9._-]{1,255}$")
    dir: Path | None = None
    intermediate: bool = Field(default=False, description="sign SVIDs with an intermediate")
    cert_ttl: Duration = Field(default=DAY, description="lifetime of an SVID")
    root_ttl: Duration = 3650 * DAY
    intermediate_ttl: Duration = 365 * DAY
    publish_delay: Duration = Field(
        default=3600.0, description="how long a new root is trusted before it signs"
    )
    root_cert_file: Path | None = None
    root_key_file: Path | None = None
    intermediate_cert_file: Path | None = None
    intermediate_key_file: Path | None = None
    bootstrap_tokens: dict[str, str] = Field(
        default={}, description='token -> "namespace/service" (or "namespace/*") it may claim'
    )


def _time(at: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(at, tz=dt.UTC)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Authority:
    """A CA certificate with its key."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def not_after(self) -> float:
        return self.cert.not_valid_after_utc.timestamp()


@dataclass(frozen=True)
class Issued:
    chain: bytes  # PEM: the leaf, then the intermediate if there is one
    info: CertInfo


@dataclass(frozen=True)
class Signer:
    """The root and, when configured, the intermediate that signs under it."""

    root: Authority | x509.Certificate  # a bare cert when only the intermediate's key is held
    intermediate: Authority | None

    @property
    def root_cert(self) -> x509.Certificate:
        return self.root.cert if isinstance(self.root, Authority) else self.root

    @property
    def issuer(self) -> Authority:
        if self.intermediate is not None:
            return self.intermediate
        assert isinstance(self.root, Authority)
        return self.root


@dataclass
class Pending:
    signer: Signer
    activate_at: float


@dataclass
class Retiring:
    cert: x509.Certificate
    retire_at: float


def _ca_cert(
    name: str,
    key: PrivateKey,
    issuer: Authority | None,
    now: float,
    ttl: float,
    path_length: int | None,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    not_after = now + ttl if issuer is None else min(now + ttl, issuer.not_after)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_time(now - CLOCK_SKEW))
        .not_valid_after(_time(not_after))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    signing_key = key if issuer is None else issuer.key
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    return builder.sign(signing_key, hashes.SHA256())


def new_signer(trust_domain: str, now: float, settings: CASettings) -> Signer:
    """A fresh self-signed root and, if configured, an intermediate under it."""
    # Unique names: two roots made in the same second must not share a subject,
    # or chain building could pick the wrong one during an overlap.
    stamp = f"{_time(now):%Y%m%d%H%M%S}-{secrets.token_hex(4)}"
    root_key = generate_key()
    path_length = 1 if settings.intermediate else 0
    root = Authority(
        _ca_cert(
            f"meshproxy root {trust_domain} {stamp}",
            root_key,
            None,
            now,
            settings.root_ttl,
            path_length,
        ),
        root_key,
    )
    if not settings.intermediate:
        return Signer(root, None)
    inter_key = generate_key()
    inter = _ca_cert(
        f"meshproxy intermediate {trust_domain} {stamp}",
        inter_key,
        root,
        now,
        settings.intermediate_ttl,
        0,
    )
    return Signer(root, Authority(inter, inter_key))


@dataclass
class CertificateAuthority:
    trust_domain: str
    signer: Signer
    cert_ttl: float = DAY
    pending: Pending | None = None
    retiring: list[Retiring] = field(default_factory=list)
    managed: bool = True  # False: the operator's files hold the root; rotate by replacing them

    def __post_init__(self) -> None:
        check_trust_domain(self.trust_domain)

    # -- issuing ---------------------------------------------------------------

    def sign(
        self, csr_pem: bytes, identity: SpiffeId, now: float, ttl: float | None = None
    ) -> Issued:
        """Sign ``csr_pem`` into an SVID for ``identity``.  The caller has
        authenticated that the requester may hold ``identity``; the CSR only
        brings the public key (and, if it names an identity, it must agree)."""
        if identity.trust_domain != self.trust_domain:
            raise CAError(f"this CA issues for trust domain {self.trust_domain!r} only")
        csr = self._check_csr(csr_pem, identity)
        issuer = self.signer.issuer
        not_after = now + (self.cert_ttl if ttl is None else ttl)
        if not_after > issuer.not_after:
            not_after = issuer.not_after
        if not_after <= now:
            raise CAError("the signing certificate has expired")
        public_key = csr.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.trust_domain)])
            )
            .issuer_name(issuer.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_time(now - CLOCK_SKEW))
            .not_valid_after(_time(not_after))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
                critical=False,
            )
            .sign(issuer.key, hashes.SHA256())
        )
        chain = _pem(leaf)
        if self.signer.intermediate is not None:
            chain += _pem(self.signer.intermediate.cert)
        return Issued(chain, CertInfo.of(leaf))

    @staticmethod
    def _check_csr(csr_pem: bytes, identity: SpiffeId) -> x509.CertificateSigningRequest:
        if len(csr_pem) > MAX_CSR_BYTES:
            raise CAError(f"the CSR is over {MAX_CSR_BYTES} bytes")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
            valid = csr.is_signature_valid
        except (ValueError, InvalidSignature) as exc:
            raise CAError(f"unreadable CSR: {exc}") from None
        if not valid:
            raise CAError("the CSR's signature does not verify")
        key = csr.public_key()
        if isinstance(key, ec.EllipticCurvePublicKey):
            if key.curve.name not in ("secp256r1", "secp384r1"):
                raise CAError(f"EC curve {key.curve.name} is not accepted: use P-256 or P-384")
        elif isinstance(key, rsa.RSAPublicKey):
            if key.key_size < 2048:
                raise CAError("RSA keys under 2048 bits are not accepted")
        else:
            raise CAError("only EC (P-256, P-384) and RSA (2048+) keys are accepted")
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return csr
        asked = san.get_values_for_type(x509.UniformResourceIdentifier)
        if asked and asked != [identity.uri]:
            raise CAError(f"the CSR asks for {asked}, but this requester may only be {identity}")
        return csr

    # -- trust and rotation ----------------------------------------------------

    def trusted_roots(self, now: float) -> list[x509.Certificate]:
        roots = [self.signer.root_cert]
        if self.pending is not None:
            roots.append(self.pending.signer.root_cert)
        roots += [r.cert for r in self.retiring if r.retire_at > now]
        return roots

    def trust_bundle(self, now: float) -> bytes:
        """PEM of every root a peer must trust now (current, next, retiring)."""
        return b"".join(_pem(cert) for cert in self.trusted_roots(now))

    def begin_rotation(self, now: float, publish_delay: float, settings: CASettings) -> Pending:
        if self.pending is not None:
            raise CAError("a root rotation is already in progress")
        if not self.managed:
            raise CAError("the root comes from the operator's files: rotate by replacing them")
        self.pending = Pending(new_signer(self.trust_domain, now, settings), now + publish_delay)
        return self.pending

    def advance(self, now: float) -> bool:
        """Switch to a due pending root, drop retired roots; True if anything changed."""
        changed = False
        if self.pending is not None and now >= self.pending.activate_at:
            activated = self.pending.activate_at
            self.retiring.append(Retiring(self.signer.root_cert, activated + self.cert_ttl))
            self.signer = self.pending.signer
            self.pending = None
            changed = True
        kept = [r for r in self.retiring if r.retire_at > now]
        if len(kept) != len(self.retiring):
            self.retiring = kept
            changed = True
        return changed


# -- files ----------------------------------------------------------------------


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by the owner only, replacing it whole."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def read_private(path: Path) -> bytes:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CAError(f"{path}: a key file must not be readable by others (chmod 600)")
    return path.read_bytes()


class CADirectory:
    """The CA's files: ``root.{pem,key}``, ``intermediate.{pem,key}``,
    ``next-*`` during a rotation, and ``rotation.json`` (retiring roots, the
    activation time).  Every file is written 0600 in a 0700 directory."""

    def __init__(self, path: Path, settings: CASettings) -> None:
        self.path = path
        self.settings = settings

    def _authority(self, cert_file: Path, key_file: Path) -> Authority:
        try:
            certs = load_certificates(cert_file.read_bytes())
            return Authority(certs[0], load_key(read_private(key_file)))
        except (OSError, CertificateError) as exc:
            raise CAError(f"cannot load {cert_file} / {key_file}: {exc}") from None

    def _load_signer(self, prefix: str) -> Signer | None:
        root_pem = self.path / f"{prefix}root.pem"
        if not root_pem.exists():
            return None
        root = self._authority(root_pem, self.path / f"{prefix}root.key")
        inter = None
        if (self.path / f"{prefix}intermediate.pem").exists():
            inter = self._authority(
                self.path / f"{prefix}intermediate.pem", self.path / f"{prefix}intermediate.key"
            )
        return Signer(root, inter)

    def _given_signer(self) -> Signer | None:
        s = self.settings
        if s.root_cert_file is None:
            return None
        inter = None
        if s.intermediate_cert_file is not None and s.intermediate_key_file is not None:
            inter = self._authority(s.intermediate_cert_file, s.intermediate_key_file)
        if s.root_key_file is not None:
            return Signer(self._authority(s.root_cert_file, s.root_key_file), inter)
        if inter is None:
            raise CAError("root_cert_file needs root_key_file, or an intermediate cert and key")
        try:
            root = load_certificates(s.root_cert_file.read_bytes())[0]
        except (OSError, CertificateError) as exc:
            raise CAError(f"cannot load {s.root_cert_file}: {exc}") from None
        return Signer(root, inter)

    def load_or_create(self, now: float) -> CertificateAuthority:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path.chmod(0o700)
        given = self._given_signer()
        signer = given or self._load_signer("")
        created = signer is None
        if signer is None:
            signer = new_signer(self.settings.trust_domain, now, self.settings)
        ca = CertificateAuthority(
            self.settings.trust_domain, signer, self.settings.cert_ttl, managed=given is None
        )
        state = self.path / "rotation.json"
        if state.exists() and given is None:
            data = json.loads(read_private(state))
            next_signer = self._load_signer("next-")
            if next_signer is not None and data.get("activate_at") is not None:
                ca.pending = Pending(next_signer, float(data["activate_at"]))
            for entry in data.get("retiring", []):
                cert = x509.load_pem_x509_certificate(entry["pem"].encode())
                ca.retiring.append(Retiring(cert, float(entry["retire_at"])))
        if created:
            self.save(ca)
        return ca

    def _write_signer(self, prefix: str, signer: Signer | None) -> None:
        names = ("root", "intermediate")
        if signer is None:
            for name in names:
                for ext in ("pem", "key"):
                    with contextlib.suppress(FileNotFoundError):
                        (self.path / f"{prefix}{name}.{ext}").unlink()
            return
        for name, authority in zip(names, (signer.root, signer.intermediate), strict=True):
            if isinstance(authority, Authority):
                write_private(self.path / f"{prefix}{name}.pem", _pem(authority.cert))
                write_private(self.path / f"{prefix}{name}.key", key_pem(authority.key))

    def save(self, ca: CertificateAuthority) -> None:
        """Persist the CA; files given by the operator are never written."""
        if ca.managed:
            self._write_signer("", ca.signer)
        self._write_signer("next-", ca.pending.signer if ca.pending else None)
        state = {
            "activate_at": ca.pending.activate_at if ca.pending else None,
            "retiring": [
                {"pem": _pem(r.cert).decode(), "retire_at": r.retire_at} for r in ca.retiring
            ],
        }
        write_private(self.path / "rotation.json", json.dumps(state, indent=1).encode())
