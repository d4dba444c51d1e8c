"""Why a TLS connection was refused: one reason word per case, counted and logged.

``classify`` turns what ``ssl`` raised into a reason from ``REASONS``;
``Refusals`` counts by (direction, reason) and logs each refusal with the
peer's address and the detail, so an operator sees *why* (unknown CA, expired,
wrong SPIFFE ID, plaintext on a STRICT port) without a packet capture.  The
counts are plain numbers for the metrics room to export.  No sockets here.
"""

from __future__ import annotations

import logging
import ssl
from collections import Counter
from typing import Literal

log = logging.getLogger("meshproxy.security")

Direction = Literal["inbound", "outbound"]
REASONS = (
    "plaintext_on_strict",  # the first byte is not a TLS handshake record on a STRICT port
    "no_client_certificate",  # TLS without a client certificate (mTLS is required)
    "unknown_ca",  # the chain does not lead to a root of our trust bundle
    "expired",
    "not_yet_valid",
    "bad_certificate",  # any other verification failure
    "no_spiffe_id",  # a verified certificate without one valid SPIFFE URI SAN
    "wrong_spiffe_id",  # a valid identity, but not the one expected
    "peer_refused_us",  # the peer sent an alert: it refused our certificate
    "handshake_timeout",
    "handshake_failed",  # protocol version, ciphers, garbage, a reset mid-handshake
)
Reason = str

# X509_V_ERR_* codes (openssl/x509_vfy.h) that have their own reason.
_VERIFY_CODES = {
    2: "unknown_ca",  # unable to get issuer certificate
    9: "not_yet_valid",
    10: "expired",
    18: "unknown_ca",  # self-signed leaf
    19: "unknown_ca",  # self-signed certificate in chain
    20: "unknown_ca",  # unable to get local issuer certificate
    21: "unknown_ca",  # unable to verify the first certificate
}
_NO_CERT = {"PEER_DID_NOT_RETURN_A_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED"}


class TLSRefused(Exception):
    """A connection refused at or right after the handshake, with its reason."""

    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


def classify(exc: BaseException) -> tuple[Reason, str]:
    """A reason and a short detail for an exception out of a TLS handshake."""
    if isinstance(exc, TLSRefused):
        return exc.reason, exc.detail
    if isinstance(exc, TimeoutError):
        return "handshake_timeout", "no complete handshake in time"
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        return _VERIFY_CODES.get(code, "bad_certificate"), str(exc.verify_message)
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason in _NO_CERT:
            return "no_client_certificate", reason
        if "ALERT" in reason:
            return "peer_refused_us", reason
        return "handshake_failed", reason or str(exc)
    return "handshake_failed", f"{type(exc).__name__}: {exc}"


class Refusals:
    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, Reason]] = Counter()  # (direction, reason)

    def record(self, direction: Direction, reason: Reason, peer: object, detail: str) -> None:
        self.counts[(direction, reason)] += 1
        log.warning(
            "tls refused direction=%s reason=%s peer=%s %s", direction, reason, peer, detail
        )

    def total(self, reason: Reason | None = None) -> int:
        return sum(n for (_, r), n in self.counts.items() if reason is None or r == reason)
