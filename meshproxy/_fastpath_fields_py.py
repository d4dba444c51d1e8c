"""The RFC 9110 field rules shared by both parsers of the pure-Python fast path.

Character classes, ``ParseError``, one field line, and the header helpers the
proxy uses around parsed heads.  Part of ``_fastpath_py`` (which re-exports the
public names); like it, this room holds no I/O and no connection state.
"""

from __future__ import annotations

DEFAULT_MAX_HEAD = 61440
DEFAULT_MAX_HEADERS = 100

_MAX_CONTENT_LENGTH = 2**63 - 1

# Character classes as "delete tables": ``data.translate(None, _X)`` is empty
# exactly when every byte of data belongs to class X (one C loop, no regex).
_ALPHA = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_DIGIT = b"0123456789"
_TOKEN = _ALPHA + _DIGIT + b"!#$%&'*+-.^_`|~"
_VCHAR = bytes(range(0x21, 0x7F))
_FIELD_VALUE = b"\t " + _VCHAR + bytes(range(0x80, 0x100))
_HOST = _ALPHA + _DIGIT + b"-._~%!$&'()*+,;=:[]"
_SCHEME = _ALPHA + _DIGIT + b"+-."
_HEX = b"0123456789abcdefABCDEF"
_OWS = b" \t"

_HOP_BY_HOP = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    )
)


class ParseError(Exception):
    """A message refused.  ``status`` is the HTTP status to answer with
    (400, 431, 501, 505; 502 for responses); ``reason`` is short and safe to
    send on the wire."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


def is_token(data: bytes) -> bool:
    """Whether ``data`` is a non-empty RFC 9110 token (a field name, a method)."""
    return bool(data) and not data.translate(None, _TOKEN)


def is_field_value(data: bytes) -> bool:
    """Whether ``data`` may be sent as a field value: no CR, LF, NUL or other
    controls except HTAB, and no leading or trailing whitespace."""
    if data.translate(None, _FIELD_VALUE):
        return False
    return not data or (data[0] not in _OWS and data[-1] not in _OWS)


def _field_line(line: bytes, status: int) -> tuple[bytes, bytes]:
    colon = line.find(b":")
    if colon <= 0:
        if line[:1] in (b" ", b"\t"):
            raise ParseError(status, "obsolete line folding")
        raise ParseError(status, "invalid header field")
    name = line[:colon]
    if name.translate(None, _TOKEN):
        raise ParseError(status, "invalid header name")
    value = line[colon + 1 :].strip(_OWS)
    if value.translate(None, _FIELD_VALUE):
        raise ParseError(status, "invalid header value")
    return name, value


def header_value(headers: list[tuple[bytes, bytes]], lname: bytes) -> bytes | None:
    """The first value of the field named ``lname`` (lower-case), or None."""
    size = len(lname)
    for name, value in headers:
        if len(name) == size and name.lower() == lname:
            return value
    return None


def is_hop_by_hop(lname: bytes, connection: tuple[bytes, ...]) -> bool:
    """Whether the lower-cased field name ``lname`` belongs to one hop only."""
    return lname in _HOP_BY_HOP or lname in connection


def hop_by_hop_fields(
    headers: list[tuple[bytes, bytes]], connection: tuple[bytes, ...]
) -> list[tuple[bytes, bytes]]:
    """The hop-by-hop fields of ``headers`` as (lower-cased name, value), in order."""
    out = []
    for name, value in headers:
        lname = name.lower()
        if lname in _HOP_BY_HOP or lname in connection:
            out.append((lname, value))
    return out


def end_to_end_headers(
    headers: list[tuple[bytes, bytes]], connection: tuple[bytes, ...]
) -> list[tuple[bytes, bytes]]:
    """``headers`` without the hop-by-hop fields, in their original order."""
    return [(n, v) for n, v in headers if not is_hop_by_hop(n.lower(), connection)]


def keep_alive_timeout(headers: list[tuple[bytes, bytes]]) -> float | None:
    """Seconds from ``Keep-Alive: timeout=N`` (the first field with a valid
    one), or None."""
    for name, value in headers:
        if len(name) != 10 or name.lower() != b"keep-alive":
            continue
        for param in value.split(b","):
            key, eq, number = param.partition(b"=")
            if eq and key.strip(_OWS).lower() == b"timeout":
                number = number.strip(_OWS).strip(b'"')
                if number and len(number) <= 9 and not number.translate(None, _DIGIT):
                    return float(int(number))
    return None
