"""Heads rewritten on their way through the proxy: bytes in, bytes out (sans-IO).

The request head sent upstream loses its hop-by-hop fields (RFC 9110 section
7.6.1), gains X-Forwarded-For / X-Forwarded-Proto / X-Request-Id, and keeps the
client's framing (Content-Length as is, chunked passed through).  The response
head sent downstream loses the upstream's hop-by-hop fields and gains the
Connection / Transfer-Encoding fields that describe *our* framing to the client.

Nothing here touches a socket or a clock; the protocols in ``server`` and
``upstream`` call these functions once per message.
"""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING

from meshproxy import fastpath as fp

if TYPE_CHECKING:
    from meshproxy.resolve import Route

# The hop-by-hop rule (RFC 9110 section 7.6.1) is the parser's: one list for
# every room that forwards fields.  The per-field check runs on every request,
# so its fixed names are cached here as a set, taken from that rule.
is_hop_by_hop = fp.is_hop_by_hop
_HOP_CANDIDATES = (
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
FIXED_HOP_BY_HOP = frozenset(n for n in _HOP_CANDIDATES if is_hop_by_hop(n, ()))

# Fields the proxy sets itself on the upstream request; the client's copies are
# merged (X-Forwarded-For), kept (X-Request-Id, Host) or replaced (X-Forwarded-Proto).
_XFF = b"x-forwarded-for"
_XFP = b"x-forwarded-proto"
_XRID = b"x-request-id"
_HOST = b"host"
_CL = b"content-length"
_PROXY_SET = frozenset({_XFF, _XFP, _XRID, _HOST})
# A request with none of these fields leaves with its head as received, our
# fields appended (``fp.raw_request_head``, whose list this is).
REWRITE = FIXED_HOP_BY_HOP | {_XFF, _XFP, _XRID}
_raw_request_head = fp.raw_request_head
_hop_by_hop_fields = fp.hop_by_hop_fields
_KEEP_ALIVE_ONLY = [(b"connection", b"keep-alive")]


# Request ids: a random per-process prefix and a counter, 32 hex digits like a
# uuid4's.  Unique without a getrandom() system call per request.
_ID_PREFIX = os.urandom(8).hex().encode()
_id_counter = itertools.count(int.from_bytes(os.urandom(4), "big"))


def new_request_id() -> bytes:
    return b"%s%016x" % (_ID_PREFIX, next(_id_counter))


def origin_form(target: bytes) -> tuple[bytes | None, bytes]:
    """Split an absolute-form target (``http://host:port/path?q``) into its
    authority and the origin-form path; other targets come back unchanged."""
    if target[:1] == b"/" or target == b"*":
        return None, target
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return None, target
    slash = rest.find(b"/")
    query = rest.find(b"?")
    cut = min(p for p in (slash, query, len(rest)) if p >= 0)
    path = rest[cut:]
    if not path or path[:1] == b"?":
        path = b"/" + path
    return rest[:cut], path


def shadow_host(host: bytes) -> bytes:
    """The Host of a mirrored request, as Envoy and Istio send it:
    ``ratings:8080`` -> ``ratings-shadow:8080``."""
    if host[:1] == b"[":
        end = host.find(b"]")
        return host[: end + 1] + b"-shadow" + host[end + 1 :] if end > 0 else host + b"-shadow"
    name, colon, port = host.partition(b":")
    return name + b"-shadow" + colon + port


def strip_port(host: bytes) -> bytes:
    """``name:8080`` -> ``name``; ``[::1]:80`` -> ``::1``."""
    if host[:1] == b"[":
        end = host.find(b"]")
        return host[1:end] if end > 0 else host
    return host.partition(b":")[0]


def with_fields(
    headers: list[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """``headers`` with ``extra`` set: each replaces the fields of its name."""
    replaced = {name.lower() for name, _ in extra}
    return [pair for pair in headers if pair[0].lower() not in replaced] + extra


def build_request_head(
    head: fp.RequestHead,
    path: bytes,
    client_ip: bytes,
    authority: bytes | None,
    raw: bytes | None = None,
    request_id: bytes | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> bytes:
    """The head to send upstream, always as HTTP/1.1 on a keep-alive connection.

    ``authority`` is the Host to set (replacing the client's): an absolute-form
    target's authority, a route's host rewrite, or the Host of an HTTP/1.0
    request without one.  ``raw``, the head as received, is reused as is when
    nothing in it must change (the common case): only our fields are appended.
    ``request_id`` is the X-Request-Id to add when the client sent none (a
    fresh one when None).  ``headers`` replaces the client's fields (after a
    route's header edits).  ``extra`` are fields to set, each replacing the
    client's fields of that name (trace context, a filter's headers); when the
    client sent none of them, they are appended to ``raw`` as ours are."""
    if raw is not None and headers is None and authority is None:
        request_id = request_id or new_request_id()
        as_received = _raw_request_head(head, raw, client_ip, request_id, extra)
        if as_received is not None:
            return as_received
    drop = head.connection
    if extra:
        headers = with_fields(head.headers if headers is None else headers, extra)
    xff: bytes | None = None
    host: bytes | None = None
    has_rid = False
    length_sent = False
    out = [head.method, b" ", path, b" HTTP/1.1\r\n"]
    for name, value in head.headers if headers is None else headers:
        lname = name.lower()
        if lname == _CL:
            if not length_sent:
                length_sent = True
                out += (name, b": ", value, b"\r\n")
        elif lname in _PROXY_SET:
            if lname == _XFF:
                xff = value if xff is None else xff + b", " + value
            elif lname == _XRID:
                has_rid = True
                out += (name, b": ", value, b"\r\n")
            elif lname == _HOST and host is None:
                host = value
                out += (b"Host: ", authority or value, b"\r\n")
        elif lname not in FIXED_HOP_BY_HOP and lname not in drop:
            out += (name, b": ", value, b"\r\n")
    if host is None and authority is not None:
        out += (b"Host: ", authority, b"\r\n")
    if head.body == fp.BODY_CHUNKED:
        out.append(b"Transfer-Encoding: chunked\r\n")
    if head.upgrade is not None:
        out += (b"Connection: upgrade\r\nUpgrade: ", head.upgrade, b"\r\n")
    out += (
        b"X-Forwarded-For: ",
        client_ip if xff is None else xff + b", " + client_ip,
        b"\r\nX-Forwarded-Proto: http\r\n",
    )
    if not has_rid:
        out += (b"X-Request-Id: ", request_id or new_request_id(), b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def edited_request_head(
    head: fp.RequestHead,
    route: Route,
    path: bytes,
    client_ip: bytes,
    authority: bytes | None,
    rid: bytes,
    extra: list[tuple[bytes, bytes]],
) -> tuple[bytes, bytes | None]:
    """The upstream head after ``extra`` (the observer's fields and the
    filters' headers, each replacing the client's of that name), the route's
    header edits and rewrites; and the mirror's head (Host ``-shadow``) if any."""
    headers = head.headers
    if extra:
        headers = with_fields(headers, extra)
    edit = route.request_headers
    if edit is not None:
        headers = edit.apply(headers)
    upath = route.upstream_path(path)
    host = route.host_rewrite or authority
    out = build_request_head(head, upath, client_ip, host, None, rid, headers)
    mirror = None
    if route.mirror is not None:
        shadow = shadow_host(host or head.host or b"")
        mirror = build_request_head(head, upath, client_ip, shadow, None, rid, headers)
    return out, mirror


# Status lines by (status, reason), built once: upstreams repeat the same few.
_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}


def status_line(status: int, reason: bytes) -> bytes:
    line = _STATUS_LINES.get((status, reason))
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        if len(_STATUS_LINES) < 256:
            _STATUS_LINES[(status, reason)] = line
    return line


def has_hop_by_hop(head: fp.ResponseHead) -> bool:
    """Whether the response carries a field that must not cross the proxy.

    A bare ``Connection: keep-alive`` does not count: forwarding it to an
    HTTP/1.1 client we keep alive says nothing false, and sparing the rebuild
    matters because many servers send it on every response."""
    fields = _hop_by_hop_fields(head.headers, head.connection)
    if not fields or fields == _KEEP_ALIVE_ONLY:  # nginx's answers: no loop
        return False
    for lname, value in fields:
        if lname == b"connection" and value.lower() == b"keep-alive":
            continue
        return True
    return False


def build_response_head(
    head: fp.ResponseHead,
    raw: bytes | bytearray,
    hop: bool,
    chunked_out: bool,
    connection: bytes | None,
    upgrade: bool,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> bytes | bytearray:
    """The head to send downstream.

    ``raw`` is the upstream's head as received; when it carries no hop-by-hop
    field (``hop`` false) and needs no addition, ``raw`` itself is returned
    (the common case, no copy).  ``chunked_out``: we frame the body as chunked
    to the client.  ``connection``: the Connection value to announce
    (``close``, ``keep-alive``) or None.  ``upgrade``: a 101 answer, whose
    Upgrade field stays.  ``headers`` replaces the upstream's fields (after a
    route's header edits).
    """
    if (
        not hop
        and connection is None
        and not chunked_out
        and head.version == 11
        and headers is None
    ):
        return raw
    drop = head.connection
    out = [status_line(head.status, head.reason)]
    for name, value in head.headers if headers is None else headers:
        lname = name.lower()
        if lname in FIXED_HOP_BY_HOP or lname in drop:
            if upgrade and lname == b"upgrade":
                out += (name, b": ", value, b"\r\n")
            continue
        out += (name, b": ", value, b"\r\n")
    if upgrade:
        out.append(b"Connection: upgrade\r\n")
    elif connection is not None:
        out += (b"Connection: ", connection, b"\r\n")
    if chunked_out:
        out.append(b"Transfer-Encoding: chunked\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def idle_deadline(configured: float, announced: float | None) -> float:
    """How long a pooled connection may stay idle: our setting, or a bit less
    than the upstream announced, so we never write into a closing socket."""
    if announced is None:
        return configured
    margin = 1.0 if announced > 2.0 else announced / 2
    return max(0.0, min(configured, announced - margin))
