"""What a filter answers instead of forwarding: status, short reason, extra headers.

Built-in refusals are made once and shared; a reply with per-request headers
(``Retry-After``) is made per refusal, which is the rare path.  Header names
and values are bytes and are never taken from the request unchecked.
"""

from __future__ import annotations

from collections.abc import Sequence


class LocalReply:
    """Answer the client with ``status`` and ``reason`` (the text body) plus
    ``headers``; ``header_block`` is those headers as ``Name: value\\r\\n`` lines."""

    __slots__ = ("header_block", "headers", "reason", "status")

    def __init__(
        self, status: int, reason: str, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        if not 100 <= status <= 599:
            raise ValueError(f"status {status} is not an HTTP status")
        for name, value in headers:
            if b"\r" in name + value or b"\n" in name + value or b":" in name:
                raise ValueError(f"header {name!r} would break the response head")
        self.status = status
        self.reason = reason
        self.headers = tuple(headers)
        self.header_block = b"".join(b"%s: %s\r\n" % (n, v) for n, v in self.headers)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def __repr__(self) -> str:
        return f"LocalReply({self.status}, {self.reason!r})"


FILTER_ERROR = LocalReply(500, "filter error")
