"""Replies the proxy writes itself (errors, refusals, the interim 100).

Each reply is plain text with a short body naming what failed, e.g.
``upstream connect timeout``.  The bytes are built once per (status, reason,
close) and cached: error storms must not cost more than success.
"""

from __future__ import annotations

_REASONS = {
    100: b"Continue",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    417: b"Expectation Failed",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_CACHE: dict[tuple[int, str, bool, bool], bytes] = {}


def reason_phrase(status: int) -> bytes:
    return _REASONS.get(status, b"Error")


def local_reply(status: int, reason: str, close: bool, head_only: bool = False) -> bytes:
    """A complete response: ``status`` with ``reason`` as its text body.

    ``close`` adds ``Connection: close`` (the caller then closes).
    ``head_only``: the answer to a HEAD request, which has no body."""
    key = (status, reason, close, head_only)
    data = _CACHE.get(key)
    if data is None:
        body = reason.encode("ascii", "replace") + b"\n"
        data = b"".join(
            (
                b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status)),
                b"Content-Type: text/plain\r\n",
                b"Content-Length: %d\r\n" % len(body),
                b"Connection: close\r\n" if close else b"",
                b"\r\n",
                b"" if head_only else body,
            )
        )
        if len(_CACHE) < 1024:
            _CACHE[key] = data
    return data
