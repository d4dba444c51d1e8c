"""HTTP/1.1 head parsing and chunk framing, compiled with Cython (twin of ``_fastpath_py``).

PROVISIONAL: a first cut that fixes the API; the strict implementation replaces
the bodies, not the names.

API (both implementations export exactly these names):

* ``parse_request_head(buf, start=0, max_head=61440, max_headers=100)``
  -> ``(RequestHead, end)`` or ``None`` when the head is not complete yet.
  ``end`` is the offset just past the blank line.  Raises ``ParseError``.
* ``parse_response_head(buf, start=0, request_method=b"GET", max_head=..., max_headers=...)``
  -> ``(ResponseHead, end)`` or ``None``.  Body framing depends on the request
  method (HEAD, CONNECT) and the status (1xx, 204, 304), RFC 9112 section 6.3.
* ``ChunkedDecoder().feed(data) -> (pieces, consumed)``: payload pieces decoded
  from ``data`` and how many bytes of ``data`` belonged to the chunked body;
  bytes past ``consumed`` exist only once ``done`` is true (the next message).
* ``BODY_NONE / BODY_LENGTH / BODY_CHUNKED / BODY_UNTIL_CLOSE / BODY_TUNNEL``.
"""

from __future__ import annotations

__all__ = [
    "BODY_CHUNKED",
    "BODY_LENGTH",
    "BODY_NONE",
    "BODY_TUNNEL",
    "BODY_UNTIL_CLOSE",
    "ChunkedDecoder",
    "ParseError",
    "RequestHead",
    "ResponseHead",
    "parse_request_head",
    "parse_response_head",
]

BODY_NONE = 0
BODY_LENGTH = 1
BODY_CHUNKED = 2
BODY_UNTIL_CLOSE = 3  # responses only: the body ends when the connection closes
BODY_TUNNEL = 4  # after a 101 or a 2xx to CONNECT: raw bytes both ways

DEFAULT_MAX_HEAD = 61440
DEFAULT_MAX_HEADERS = 100


class ParseError(Exception):
    """A message refused.  ``status`` is the HTTP status to answer with
    (400, 431, 501, 505); ``reason`` is short and safe to send on the wire."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


class RequestHead:
    """A parsed request head.  Header names keep their original case; values
    have surrounding whitespace removed.  ``connection`` holds the lower-cased
    tokens of every Connection header (hop-by-hop names to drop)."""

    __slots__ = (
        "body",
        "connection",
        "content_length",
        "expect_continue",
        "headers",
        "host",
        "keep_alive",
        "method",
        "target",
        "upgrade",
        "version",
    )

    method: bytes
    target: bytes
    version: int  # 10 for HTTP/1.0, 11 for HTTP/1.1
    headers: list[tuple[bytes, bytes]]
    body: int  # BODY_NONE, BODY_LENGTH or BODY_CHUNKED
    content_length: int  # -1 unless body == BODY_LENGTH
    keep_alive: bool
    connection: tuple[bytes, ...]
    upgrade: bytes | None  # the Upgrade value when Connection names "upgrade"
    expect_continue: bool
    host: bytes | None


class ResponseHead:
    """A parsed response head; same conventions as ``RequestHead``."""

    __slots__ = (
        "body",
        "connection",
        "content_length",
        "headers",
        "keep_alive",
        "reason",
        "status",
        "version",
    )

    version: int
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: int
    content_length: int
    keep_alive: bool
    connection: tuple[bytes, ...]


def _split_lines(buf: bytes | bytearray, start: int, max_head: int) -> tuple[list[bytes], int] | None:
    end = buf.find(b"\r\n\r\n", start)
    if end < 0:
        if len(buf) - start > max_head:
            raise ParseError(431, "request header fields too large")
        return None
    if end + 4 - start > max_head:
        raise ParseError(431, "request header fields too large")
    return bytes(buf[start:end]).split(b"\r\n"), end + 4


def _headers(lines: list[bytes], max_headers: int) -> list[tuple[bytes, bytes]]:
    if len(lines) > max_headers:
        raise ParseError(431, "too many header fields")
    out: list[tuple[bytes, bytes]] = []
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise ParseError(400, "invalid header field")
        out.append((name, value.strip(b" \t")))
    return out


def _framing(headers: list[tuple[bytes, bytes]]) -> tuple[int, int, tuple[bytes, ...]]:
    body, length, conn = BODY_NONE, -1, []
    for name, value in headers:
        lname = name.lower()
        if lname == b"content-length":
            if not value.isdigit() or (length >= 0 and int(value) != length):
                raise ParseError(400, "invalid content-length")
            body, length = BODY_LENGTH, int(value)
        elif lname == b"transfer-encoding":
            if value.lower().rsplit(b",", 1)[-1].strip() != b"chunked":
                raise ParseError(501, "unsupported transfer-encoding")
            body = BODY_CHUNKED
        elif lname == b"connection":
            conn.extend(t.strip().lower() for t in value.split(b","))
    return body, length, tuple(conn)


def parse_request_head(
    buf: bytes | bytearray,
    start: int = 0,
    max_head: int = DEFAULT_MAX_HEAD,
    max_headers: int = DEFAULT_MAX_HEADERS,
) -> tuple[RequestHead, int] | None:
    got = _split_lines(buf, start, max_head)
    if got is None:
        return None
    lines, end = got
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise ParseError(400, "invalid request line")
    head = RequestHead()
    head.method, head.target = parts[0], parts[1]
    head.version = 11 if parts[2] == b"HTTP/1.1" else 10
    head.headers = _headers(lines[1:], max_headers)
    head.body, head.content_length, head.connection = _framing(head.headers)
    head.keep_alive = (
        b"close" not in head.connection if head.version == 11 else b"keep-alive" in head.connection
    )
    head.host = next((v for n, v in head.headers if n.lower() == b"host"), None)
    head.expect_continue = any(
        n.lower() == b"expect" and v.lower() == b"100-continue" for n, v in head.headers
    )
    head.upgrade = None
    if b"upgrade" in head.connection:
        head.upgrade = next((v for n, v in head.headers if n.lower() == b"upgrade"), None)
    return head, end


def parse_response_head(
    buf: bytes | bytearray,
    start: int = 0,
    request_method: bytes = b"GET",
    max_head: int = DEFAULT_MAX_HEAD,
    max_headers: int = DEFAULT_MAX_HEADERS,
) -> tuple[ResponseHead, int] | None:
    got = _split_lines(buf, start, max_head)
    if got is None:
        return None
    lines, end = got
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise ParseError(502, "invalid status line")
    head = ResponseHead()
    head.version = 11 if version == b"HTTP/1.1" else 10
    head.status, head.reason = int(code), reason
    head.headers = _headers(lines[1:], max_headers)
    head.body, head.content_length, head.connection = _framing(head.headers)
    head.keep_alive = (
        b"close" not in head.connection if head.version == 11 else b"keep-alive" in head.connection
    )
    if head.status == 101 or (request_method == b"CONNECT" and 200 <= head.status < 300):
        head.body = BODY_TUNNEL
    elif request_method == b"HEAD" or head.status < 200 or head.status in (204, 304):
        head.body, head.content_length = BODY_NONE, -1
    elif head.body == BODY_NONE:
        head.body = BODY_UNTIL_CLOSE
        head.keep_alive = False
    return head, end


class ChunkedDecoder:
    """Incremental decoder of a chunked body; any split of the input works."""

    __slots__ = ("_buf", "_remaining", "done", "trailers")

    def __init__(self) -> None:
        self._buf = b""
        self._remaining = -1  # bytes of chunk data still expected; -1: expecting a size line
        self.done = False
        self.trailers: list[tuple[bytes, bytes]] = []

    def feed(self, data: bytes) -> tuple[list[bytes], int]:
        pieces: list[bytes] = []
        held = len(self._buf)
        buf = self._buf + data
        pos = 0
        while not self.done:
            if self._remaining > 0:
                take = buf[pos : pos + self._remaining]
                if not take:
                    break
                pieces.append(take)
                pos += len(take)
                self._remaining -= len(take)
                continue
            if self._remaining == 0:
                if len(buf) - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise ParseError(400, "invalid chunk data end")
                pos += 2
                self._remaining = -1
                continue
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                break
            size_text = buf[pos:nl].split(b";", 1)[0]
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ParseError(400, "invalid chunk size") from None
            pos = nl + 2
            if size == 0:
                end = buf.find(b"\r\n", pos)
                while end > pos:
                    end = buf.find(b"\r\n", end + 2)
                if end < 0:
                    pos = nl - len(buf[:nl]) + pos  # wait for trailers
                    break
                self.done = True
                pos = end + 2
                break
            self._remaining = size
        self._buf = buf[pos:] if not self.done else b""
        consumed = pos - held if self.done else len(data)
        return pieces, consumed
