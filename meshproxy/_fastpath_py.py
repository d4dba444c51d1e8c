"""HTTP/1.1 head parsing and chunk framing, in pure Python (twin of ``_fastpath.pyx``).

This room turns bytes into message heads and chunked bodies, strictly (RFC 9112,
with llhttp's strict mode as the reference).  It holds no sockets, clocks or
connection state: the caller owns the buffer and asks again when more arrives.
The field rules and helpers live in ``_fastpath_fields_py``, the chunked decoder
in ``_fastpath_chunked_py``; this module re-exports them.

API (both implementations export exactly these names):

* ``parse_request_head(buf, start=0, max_head=61440, max_headers=100)``
  -> ``(RequestHead, end)`` or ``None`` when the head is not complete yet.
  ``end`` is the offset just past the blank line.  Empty lines before the
  request line are skipped (RFC 9112 section 2.2).  Raises ``ParseError``
  (400, 431 past ``max_head`` bytes or ``max_headers`` fields, 501 for a
  transfer coding other than a final ``chunked``, 505 for ``HTTP/x.y`` other
  than 1.0/1.1).  Errors in the lines received so far are reported before the
  head is complete, as llhttp does; each call scans the buffered head once, so
  callers re-parse only when a new LF has arrived.
* ``parse_response_head(buf, start=0, request_method=b"GET", max_head=..., max_headers=...)``
  -> ``(ResponseHead, end)`` or ``None``.  Body framing depends on the request
  method (HEAD, CONNECT) and the status (1xx, 204, 304), RFC 9112 section 6.3.
  Every refusal carries status 502 (the proxy's answer to a bad upstream).
* ``ChunkedDecoder(max_trailer_size=61440, *, response=False).feed(data)
  -> (pieces, consumed)``: payload pieces decoded from ``data`` and how many
  bytes of ``data`` belonged to the chunked body (``len(data)`` until ``done``);
  bytes past ``consumed`` are the next message.  Any split of the input works.
  Trailer fields land in ``.trailers``.  Errors are 400 (431 for oversized
  trailers), or 502 when ``response`` is true.
* ``split_bucket(key) -> int``: the traffic-split bucket of a key in [0, 10000)
  (``meshproxy.routing.split`` explains it; the values are a wire contract).
* ``SplitRoutes(routes, bounds, rand)``: the routes of a weighted split;
  ``.pick()`` / ``.pick_key(key)`` choose one (``_fastpath_split_py`` says how).
* ``BODY_NONE / BODY_LENGTH / BODY_CHUNKED / BODY_UNTIL_CLOSE / BODY_TUNNEL``.
* ``DEFAULT_MAX_HEAD``, ``DEFAULT_MAX_HEADERS``: the limits above.
* ``header_value(headers, lname) -> bytes | None``: the first value of the
  field whose lower-cased name is ``lname``.
* ``is_hop_by_hop(lname, connection) -> bool``: whether a lower-cased field name
  must not be forwarded (RFC 9110 section 7.6.1: the fixed list plus every name
  listed in Connection; ``connection`` is ``head.connection``).
* ``end_to_end_headers(headers, connection) -> list``: ``headers`` without the
  hop-by-hop ones.
* ``keep_alive_timeout(headers) -> float | None``: ``timeout=N`` of the first
  Keep-Alive field that carries one.
* ``is_token(data) -> bool`` and ``is_field_value(data) -> bool``: the
  character rules the parser applies to field names and values, for other
  rooms that accept header names or values from configuration.

Framing policy (RFC 9112 sections 6.1-6.3), chosen to leave no ambiguity for a
downstream hop:

* Transfer-Encoding together with Content-Length is refused, in requests and in
  responses, as llhttp's strict mode does: forwarding either reading lets a
  peer that picks the other one see a second, smuggled message.
* Several Content-Length fields with the same value are collapsed (RFC 9110
  section 8.6); differing values, signs, non-digits, lists, empty values and
  values over 2**63-1 are refused.
* A request Transfer-Encoding whose final coding is not ``chunked`` is answered
  501; ``chunked`` twice, or any Transfer-Encoding in an HTTP/1.0 request, is
  400.  A response whose final coding is not ``chunked`` is read until close.
* CONNECT requests have no body: their framing fields are checked, not used.
* Request targets: origin-form, absolute-form (``scheme://authority...`` with no
  userinfo), authority-form only for CONNECT, ``*`` only for OPTIONS; visible
  ASCII only.  HTTP/1.1 requests need exactly one valid Host field.
"""

from __future__ import annotations

from meshproxy._fastpath_chunked_py import ChunkedDecoder
from meshproxy._fastpath_fields_py import (
    _ALPHA,
    _DIGIT,
    _FIELD_VALUE,
    _HOST,
    _MAX_CONTENT_LENGTH,
    _OWS,
    _SCHEME,
    _TOKEN,
    _VCHAR,
    DEFAULT_MAX_HEAD,
    DEFAULT_MAX_HEADERS,
    ParseError,
    _field_line,
    end_to_end_headers,
    header_value,
    hop_by_hop_fields,
    is_field_value,
    is_hop_by_hop,
    is_token,
    keep_alive_timeout,
)
from meshproxy._fastpath_head_py import RAW_REWRITE, raw_request_head
from meshproxy._fastpath_split_py import SplitRoutes, split_bucket
from meshproxy._fastpath_tally_py import MAX_BOUNDS, ExchangeCounter, ExchangeTally, ShapeTally
from meshproxy._fastpath_trace_py import TraceIds, TraceStart, ratio_bound

__all__ = [
    "BODY_CHUNKED",
    "BODY_LENGTH",
    "BODY_NONE",
    "BODY_TUNNEL",
    "BODY_UNTIL_CLOSE",
    "DEFAULT_MAX_HEAD",
    "DEFAULT_MAX_HEADERS",
    "MAX_BOUNDS",
    "RAW_REWRITE",
    "ChunkedDecoder",
    "ExchangeCounter",
    "ExchangeTally",
    "ParseError",
    "RequestHead",
    "ResponseHead",
    "ShapeTally",
    "SplitRoutes",
    "TraceIds",
    "TraceStart",
    "end_to_end_headers",
    "header_value",
    "hop_by_hop_fields",
    "is_field_value",
    "is_hop_by_hop",
    "is_token",
    "keep_alive_timeout",
    "parse_request_head",
    "parse_response_head",
    "ratio_bound",
    "raw_request_head",
    "split_bucket",
]

BODY_NONE = 0
BODY_LENGTH = 1
BODY_CHUNKED = 2
BODY_UNTIL_CLOSE = 3  # responses only: the body ends when the connection closes
BODY_TUNNEL = 4  # after a 101 or a 2xx to CONNECT: raw bytes both ways

# Only fields with these name lengths can steer framing; others skip lower().
_SPECIAL_LENGTHS = frozenset((4, 6, 7, 10, 14, 17))


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


class _Fields:
    """What the field lines of one head say about framing and routing."""

    __slots__ = ("connection", "content_length", "expect", "hosts", "te", "upgrade")

    def __init__(self) -> None:
        self.content_length = -1
        self.te: list[bytes] | None = None
        self.connection: list[bytes] = []
        self.hosts: list[bytes] = []
        self.expect = False
        self.upgrade: list[bytes] = []


def _content_length(value: bytes, status: int) -> int:
    if not value or value.translate(None, _DIGIT) or len(value) > 19:
        raise ParseError(status, "invalid content-length")
    length = int(value)
    if length > _MAX_CONTENT_LENGTH:
        raise ParseError(status, "invalid content-length")
    return length


def _list_tokens(value: bytes, status: int, what: str) -> list[bytes]:
    """Lower-cased elements of a ``#token`` list; empty elements are ignored
    (RFC 9110 section 5.6.1)."""
    out = []
    for item in value.split(b","):
        item = item.strip(_OWS)
        if item:
            if item.translate(None, _TOKEN):
                raise ParseError(status, f"invalid {what}")
            out.append(item.lower())
    return out


def _codings(value: bytes, status: int) -> list[bytes]:
    """Lower-cased transfer-coding names; ``chunked`` takes no parameters."""
    out = []
    for item in value.split(b","):
        name, semi, _ = item.partition(b";")
        name = name.strip(_OWS)
        if not name and not semi:
            continue
        if not name or name.translate(None, _TOKEN):
            raise ParseError(status, "invalid transfer-encoding")
        name = name.lower()
        if semi and name == b"chunked":
            raise ParseError(status, "invalid transfer-encoding")
        out.append(name)
    return out


def _field_lines(
    lines: list[bytes], max_headers: int, status: int, size_status: int
) -> tuple[list[tuple[bytes, bytes]], _Fields]:
    if len(lines) > max_headers:
        raise ParseError(size_status, "too many header fields")
    headers: list[tuple[bytes, bytes]] = []
    info = _Fields()
    for line in lines:
        name, value = field = _field_line(line, status)
        headers.append(field)
        if len(name) not in _SPECIAL_LENGTHS:
            continue
        lname = name.lower()
        if lname == b"content-length":
            length = _content_length(value, status)
            if info.content_length >= 0 and length != info.content_length:
                raise ParseError(status, "conflicting content-length")
            if info.te is not None:
                raise ParseError(status, "both transfer-encoding and content-length")
            info.content_length = length
        elif lname == b"transfer-encoding":
            if info.content_length >= 0:
                raise ParseError(status, "both transfer-encoding and content-length")
            if info.te is None:
                info.te = []
            info.te.extend(_codings(value, status))
        elif lname == b"connection":
            info.connection.extend(_list_tokens(value, status, "connection"))
        elif lname == b"host" and status == 400:
            if info.hosts:
                raise ParseError(400, "more than one host")
            if value.translate(None, _HOST):
                raise ParseError(400, "invalid host")
            info.hosts.append(value)
        elif lname == b"expect":
            info.expect = info.expect or value.lower() == b"100-continue"
        elif lname == b"upgrade":
            info.upgrade.append(value)
    return headers, info


def _transfer_coding(te: list[bytes], status: int) -> bool:
    """True when the body is chunked; False when the final coding is another
    one (read until close for a response, refused for a request)."""
    if not te:
        raise ParseError(status, "invalid transfer-encoding")
    chunked = te.count(b"chunked")
    if chunked > 1:
        raise ParseError(status, "chunked applied more than once")
    return te[-1] == b"chunked"


def _version(text: bytes, status: int) -> int:
    if text == b"HTTP/1.1":
        return 11
    if text == b"HTTP/1.0":
        return 10
    if (
        len(text) == 8
        and text.startswith(b"HTTP/")
        and text[5] in b"0123456789"
        and text[6] == 46
        and text[7] in b"0123456789"
    ):
        raise ParseError(505 if status == 400 else status, "http version not supported")
    raise ParseError(status, "invalid http version")


def _version_prefix(text: bytes, status: int) -> None:
    """Refuse early a partial version that cannot become ``HTTP/d.d``."""
    if len(text) > 8:
        raise ParseError(status, "invalid http version")
    if len(text) == 8:
        _version(text, status)
        return
    for i, c in enumerate(text):
        ok = c == b"HTTP/"[i] if i < 5 else (c == 46 if i == 6 else 48 <= c <= 57)
        if not ok:
            raise ParseError(status, "invalid http version")


def _check_target(method: bytes, target: bytes) -> None:
    if not target or target.translate(None, _VCHAR):
        raise ParseError(400, "invalid request target")
    if method == b"CONNECT":
        host, colon, port = target.rpartition(b":")
        if (
            not colon
            or not host
            or not port
            or port.translate(None, _DIGIT)
            or len(port) > 5
            or host.translate(None, _HOST)
            or b"@" in host
        ):
            raise ParseError(400, "invalid connect target")
    elif target[0] == 47:  # origin-form
        return
    elif target == b"*":
        if method != b"OPTIONS":
            raise ParseError(400, "invalid request target")
    else:
        scheme, sep, rest = target.partition(b"://")
        if not sep or not scheme or scheme[0] not in _ALPHA or scheme.translate(None, _SCHEME):
            raise ParseError(400, "invalid request target")
        end = len(rest)
        for stop in b"/?#":
            i = rest.find(stop)
            if 0 <= i < end:
                end = i
        if b"@" in rest[:end]:
            raise ParseError(400, "userinfo in request target")


def _partial_line(buf: bytes | bytearray, pos: int, n: int) -> bytes:
    line = bytes(buf[pos:n])
    return line[:-1] if line.endswith(b"\r") else line


def _check_partial_field(line: bytes, status: int) -> None:
    if not line:
        return
    if line[0] in _OWS:
        raise ParseError(status, "obsolete line folding")
    colon = line.find(b":")
    name = line if colon < 0 else line[:colon]
    if colon == 0 or name.translate(None, _TOKEN):
        raise ParseError(status, "invalid header name")
    if colon > 0 and line[colon + 1 :].translate(None, _FIELD_VALUE):
        raise ParseError(status, "invalid header value")


def _head_bounds(
    buf: bytes | bytearray, start: int, max_head: int, size_status: int
) -> tuple[int, int, int]:
    """(first byte of the start line, offset of the blank line or -1, offset of
    the last CRLF seen or -1)."""
    pos = start
    while buf.startswith(b"\r\n", pos):
        pos += 2
        if pos - start > max_head:
            raise ParseError(size_status, "header section too large")
    end = buf.find(b"\r\n\r\n", pos)
    if end < 0:
        if len(buf) - start > max_head:
            raise ParseError(size_status, "header section too large")
        return pos, -1, buf.rfind(b"\r\n", pos)
    if end + 4 - start > max_head:
        raise ParseError(size_status, "header section too large")
    return pos, end, end


def _request_line(line: bytes) -> tuple[bytes, bytes, int]:
    sp1 = line.find(b" ")
    sp2 = line.find(b" ", sp1 + 1) if sp1 > 0 else -1
    if sp2 < 0:
        raise ParseError(400, "invalid request line")
    method = line[:sp1]
    if method.translate(None, _TOKEN):
        raise ParseError(400, "invalid method")
    target = line[sp1 + 1 : sp2]
    _check_target(method, target)
    return method, target, _version(line[sp2 + 1 :], 400)


def _partial_request_line(line: bytes) -> None:
    method, sp, rest = line.partition(b" ")
    if method.translate(None, _TOKEN) or (sp and not method):
        raise ParseError(400, "invalid method")
    target, sp, version = rest.partition(b" ")
    if target.translate(None, _VCHAR) or (sp and not target):
        raise ParseError(400, "invalid request target")
    if sp:
        _version_prefix(version, 400)


def parse_request_head(
    buf: bytes | bytearray,
    start: int = 0,
    max_head: int = DEFAULT_MAX_HEAD,
    max_headers: int = DEFAULT_MAX_HEADERS,
) -> tuple[RequestHead, int] | None:
    pos, end, last = _head_bounds(buf, start, max_head, 431)
    if end < 0:
        first = buf.find(b"\r\n", pos)
        if first < 0:
            _partial_request_line(_partial_line(buf, pos, len(buf)))
        else:
            _request_line(bytes(buf[pos:first]))
            if last > first:
                _field_lines(bytes(buf[first + 2 : last]).split(b"\r\n"), max_headers, 400, 431)
            _check_partial_field(_partial_line(buf, last + 2, len(buf)), 400)
        return None
    lines = bytes(buf[pos:end]).split(b"\r\n")
    method, target, version = _request_line(lines[0])
    del lines[0]
    headers, info = _field_lines(lines, max_headers, 400, 431)
    head = RequestHead()
    head.method = method
    head.target = target
    head.version = version
    head.headers = headers
    head.connection = conn = tuple(info.connection)
    head.body = BODY_NONE
    head.content_length = -1
    if info.te is not None:
        if version == 10:
            raise ParseError(400, "transfer-encoding in http/1.0")
        if not _transfer_coding(info.te, 400):
            raise ParseError(501, "unsupported transfer-encoding")
        head.body = BODY_CHUNKED
    elif info.content_length >= 0:
        head.body = BODY_LENGTH
        head.content_length = info.content_length
    if method == b"CONNECT":
        head.body = BODY_NONE
        head.content_length = -1
    if info.hosts:
        head.host = info.hosts[0]
    elif version == 11:
        raise ParseError(400, "missing host")
    else:
        head.host = None
    if version == 11:
        head.keep_alive = b"close" not in conn
    else:
        head.keep_alive = b"keep-alive" in conn and b"close" not in conn
    head.expect_continue = info.expect
    head.upgrade = b", ".join(info.upgrade) if info.upgrade and b"upgrade" in conn else None
    return head, end + 4


def _status_line(line: bytes) -> tuple[int, int, bytes]:
    version = _version(line[:8], 502)
    if len(line) < 12 or line[8] != 32 or line[9:12].translate(None, _DIGIT) or line[9] == 48:
        raise ParseError(502, "invalid status line")
    if len(line) > 12 and line[12] != 32:
        raise ParseError(502, "invalid status line")
    reason = line[13:]
    if reason.translate(None, _FIELD_VALUE):
        raise ParseError(502, "invalid reason phrase")
    return version, int(line[9:12]), reason


def _partial_status_line(line: bytes) -> None:
    _version_prefix(line[:8], 502)
    if len(line) > 8:
        code = line[9:12]
        if line[8] != 32 or code.translate(None, _DIGIT) or code[:1] == b"0":
            raise ParseError(502, "invalid status line")
        if len(line) > 12 and (line[12] != 32 or line[13:].translate(None, _FIELD_VALUE)):
            raise ParseError(502, "invalid status line")


def parse_response_head(
    buf: bytes | bytearray,
    start: int = 0,
    request_method: bytes = b"GET",
    max_head: int = DEFAULT_MAX_HEAD,
    max_headers: int = DEFAULT_MAX_HEADERS,
) -> tuple[ResponseHead, int] | None:
    pos, end, last = _head_bounds(buf, start, max_head, 502)
    if end < 0:
        first = buf.find(b"\r\n", pos)
        if first < 0:
            _partial_status_line(_partial_line(buf, pos, len(buf)))
        else:
            _status_line(bytes(buf[pos:first]))
            if last > first:
                _field_lines(bytes(buf[first + 2 : last]).split(b"\r\n"), max_headers, 502, 502)
            _check_partial_field(_partial_line(buf, last + 2, len(buf)), 502)
        return None
    lines = bytes(buf[pos:end]).split(b"\r\n")
    version, status, reason = _status_line(lines[0])
    del lines[0]
    headers, info = _field_lines(lines, max_headers, 502, 502)
    head = ResponseHead()
    head.version = version
    head.status = status
    head.reason = reason
    head.headers = headers
    head.connection = conn = tuple(info.connection)
    if version == 11:
        head.keep_alive = b"close" not in conn
    else:
        head.keep_alive = b"keep-alive" in conn and b"close" not in conn
    head.body = BODY_UNTIL_CLOSE
    head.content_length = -1
    if info.te is not None:
        if _transfer_coding(info.te, 502):
            head.body = BODY_CHUNKED
        if version == 10:
            # RFC 9112 section 6.1: faulty framing; close after this message.
            head.keep_alive = False
    elif info.content_length >= 0:
        head.body = BODY_LENGTH
        head.content_length = info.content_length
    if status == 101 or (request_method == b"CONNECT" and 200 <= status < 300):
        head.body = BODY_TUNNEL
        head.content_length = -1
    elif request_method == b"HEAD" or status < 200 or status == 204 or status == 304:
        head.body = BODY_NONE
        head.content_length = -1
    elif head.body == BODY_UNTIL_CLOSE:
        head.keep_alive = False
    return head, end + 4
