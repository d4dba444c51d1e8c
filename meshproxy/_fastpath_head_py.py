"""The upstream request head as received plus our fields, in pure Python
(twin of ``_fastpath_head.pxi``).

``raw_request_head(head, raw, client_ip, request_id, extra)`` is the common
case of ``http1.head.build_request_head``: an HTTP/1.1 request whose head
``raw`` (as received, ending in an empty line) can go upstream unchanged,
with only our fields appended::

    raw minus its last CRLF
    X-Forwarded-For: <client_ip>
    X-Forwarded-Proto: http
    X-Request-Id: <request_id>
    <name>: <value>            for each (name, value) of ``extra``
    CRLF

It returns None, and the caller rebuilds the head field by field, when
something in it must change: a ``Connection`` option (``head.connection``), a
field of ``RAW_REWRITE`` (hop-by-hop fields and the ones we set), a field
named as one of ``extra`` (compared in any case: ``extra`` replaces it),
Content-Length sent more than once (equal copies: the rebuilt head sends
one), or empty lines before the request line (or a head not ending in
CRLF CRLF).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshproxy._fastpath_fields_py import _HOP_BY_HOP

if TYPE_CHECKING:
    from meshproxy._fastpath_py import RequestHead

# Fields that force a rebuild: the fixed hop-by-hop names (RFC 9110 section
# 7.6.1, the parser's list) and the ones the proxy sets itself.
RAW_REWRITE = _HOP_BY_HOP | {b"x-forwarded-for", b"x-forwarded-proto", b"x-request-id"}
_CL = b"content-length"
# A name whose length matches none of these is skipped without lower-casing.
_LENGTHS = frozenset(len(name) for name in (*RAW_REWRITE, _CL))
_XFP_RID = b"\r\nX-Forwarded-Proto: http\r\nX-Request-Id: "
_END = b"\r\n\r\n"


def raw_request_head(
    head: RequestHead,
    raw: bytes,
    client_ip: bytes,
    request_id: bytes,
    extra: list[tuple[bytes, bytes]] | None,
) -> bytes | None:
    if head.version != 11 or head.connection or raw[:1] == b"\r" or raw[-4:] != _END:
        return None
    check = _LENGTHS
    replaced: frozenset[bytes] = frozenset()
    if extra:
        replaced = frozenset(name.lower() for name, _ in extra)
        check = check | {len(name) for name in replaced}
    lengths = 0
    for name, _value in head.headers:
        if len(name) not in check:
            continue
        lname = name.lower()
        if lname in RAW_REWRITE or lname in replaced:
            return None
        if lname == _CL:
            lengths += 1
            if lengths > 1:
                return None
    out = [raw[:-2], b"X-Forwarded-For: ", client_ip, _XFP_RID, request_id, b"\r\n"]
    if extra:
        for name, value in extra:
            out += (name, b": ", value, b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)
