# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""HTTP/1.1 head parsing and chunk framing, compiled with Cython (twin of ``_fastpath_py``).

Same names, same behaviour and same errors as ``_fastpath_py``, whose docstring
is the reference for the API and the framing policy.  The algorithm is the
twin's, step for step; only the scanning is done over ``const unsigned char*``
with 256-entry class tables, and heads are ``cdef class`` objects.  Rare paths
(transfer codings, target forms, helpers) are the twin's Python code compiled.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.string cimport memchr, memcmp, memcpy, memset

__all__ = [
    "BODY_CHUNKED",
    "BODY_LENGTH",
    "BODY_NONE",
    "BODY_TUNNEL",
    "BODY_UNTIL_CLOSE",
    "DEFAULT_MAX_HEAD",
    "DEFAULT_MAX_HEADERS",
    "MAX_BOUNDS",
    "ChunkedDecoder",
    "ExchangeCounter",
    "ExchangeTally",
    "ParseError",
    "RAW_REWRITE",
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
    "raw_request_head",
    "ratio_bound",
    "split_bucket",
]

cdef enum:
    C_BODY_NONE = 0
    C_BODY_LENGTH = 1
    C_BODY_CHUNKED = 2
    C_BODY_UNTIL_CLOSE = 3
    C_BODY_TUNNEL = 4

BODY_NONE = C_BODY_NONE
BODY_LENGTH = C_BODY_LENGTH
BODY_CHUNKED = C_BODY_CHUNKED
BODY_UNTIL_CLOSE = C_BODY_UNTIL_CLOSE  # responses only: the body ends when the connection closes
BODY_TUNNEL = C_BODY_TUNNEL  # after a 101 or a 2xx to CONNECT: raw bytes both ways

DEFAULT_MAX_HEAD = 61440
DEFAULT_MAX_HEADERS = 100

cdef long long MAX_CONTENT_LENGTH = 9223372036854775807
cdef int MAX_CHUNK_EXT = 4096

_ALPHA = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_DIGIT = b"0123456789"
_TOKEN = _ALPHA + _DIGIT + b"!#$%&'*+-.^_`|~"
_VCHAR = bytes(range(0x21, 0x7F))
_FIELD_VALUE = b"\t " + _VCHAR + bytes(range(0x80, 0x100))
_HOST = _ALPHA + _DIGIT + b"-._~%!$&'()*+,;=:[]"
_SCHEME = _ALPHA + _DIGIT + b"+-."
_HEX = b"0123456789abcdefABCDEF"
_OWS = b" \t"

# Class tables: C_X[c] is 1 when byte c belongs to class X.
cdef unsigned char C_TOKEN[256]
cdef unsigned char C_VALUE[256]
cdef unsigned char C_VCHAR[256]
cdef unsigned char C_HOST[256]
cdef unsigned char C_QDTEXT[256]
cdef unsigned char C_ESCAPABLE[256]
cdef signed char C_HEX[256]


cdef void _fill(unsigned char* table, bytes members):
    cdef const unsigned char* m = members
    cdef Py_ssize_t i
    for i in range(256):
        table[i] = 0
    for i in range(len(members)):
        table[m[i]] = 1


_fill(C_TOKEN, _TOKEN)
_fill(C_VALUE, _FIELD_VALUE)
_fill(C_VCHAR, _VCHAR)
_fill(C_HOST, _HOST)
_fill(C_QDTEXT, b"\t !" + bytes(range(0x23, 0x5C)) + bytes(range(0x5D, 0x7F)) + bytes(range(0x80, 0x100)))
_fill(C_ESCAPABLE, _FIELD_VALUE)
for _i in range(256):
    C_HEX[_i] = int(chr(_i), 16) if _i in _HEX else -1

class ParseError(Exception):
    """A message refused.  ``status`` is the HTTP status to answer with
    (400, 431, 501, 505; 502 for responses); ``reason`` is short and safe to
    send on the wire."""

    def __init__(self, status, reason):
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self):
        return f"{self.status} {self.reason}"


cdef class RequestHead:
    """A parsed request head (see ``_fastpath_py.RequestHead``)."""

    cdef public bytes method
    cdef public bytes target
    cdef public int version
    cdef public list headers
    cdef public int body
    cdef public long long content_length
    cdef public bint keep_alive
    cdef public tuple connection
    cdef public object upgrade
    cdef public bint expect_continue
    cdef public object host


cdef class ResponseHead:
    """A parsed response head (see ``_fastpath_py.ResponseHead``)."""

    cdef public int version
    cdef public int status
    cdef public bytes reason
    cdef public list headers
    cdef public int body
    cdef public long long content_length
    cdef public bint keep_alive
    cdef public tuple connection


cdef inline bint _all_in(const unsigned char* p, Py_ssize_t a, Py_ssize_t b, const unsigned char* table):
    while a < b:
        if not table[p[a]]:
            return False
        a += 1
    return True


cdef inline bint _lower_eq(const unsigned char* p, Py_ssize_t a, const char* lname, Py_ssize_t size):
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(size):
        c = p[a + i]
        if 65 <= c <= 90:
            c += 32
        if c != <unsigned char>lname[i]:
            return False
    return True


cdef const unsigned char* _pointer(object buf, Py_ssize_t* size) except NULL:
    if isinstance(buf, bytes):
        size[0] = PyBytes_GET_SIZE(buf)
        return <const unsigned char*>PyBytes_AS_STRING(buf)
    if isinstance(buf, bytearray):
        size[0] = PyByteArray_GET_SIZE(buf)
        return <const unsigned char*>PyByteArray_AS_STRING(buf)
    raise TypeError("a bytes or bytearray buffer is required")


cdef inline Py_ssize_t _find_crlf(const unsigned char* p, Py_ssize_t a, Py_ssize_t b):
    """Offset of the first CRLF in p[a:b], or -1."""
    cdef const unsigned char* hit
    while a + 1 < b:
        hit = <const unsigned char*>memchr(p + a, 13, b - a - 1)
        if hit == NULL:
            return -1
        a = hit - p
        if p[a + 1] == 10:
            return a
        a += 1
    return -1


cdef inline Py_ssize_t _rfind_crlf(const unsigned char* p, Py_ssize_t a, Py_ssize_t b):
    cdef Py_ssize_t i = b - 2
    while i >= a:
        if p[i] == 13 and p[i + 1] == 10:
            return i
        i -= 1
    return -1


cdef inline Py_ssize_t _find_blank(const unsigned char* p, Py_ssize_t a, Py_ssize_t b):
    """Offset of the first CRLFCRLF in p[a:b], or -1."""
    cdef Py_ssize_t i = _find_crlf(p, a, b)
    while i >= 0:
        if i + 3 < b and p[i + 2] == 13 and p[i + 3] == 10:
            return i
        i = _find_crlf(p, i + 2, b)
    return -1


include "_fastpath_fields.pxi"


cdef class _Fields:
    cdef long long content_length
    cdef list te
    cdef list connection
    cdef object host
    cdef bint has_host
    cdef bint expect
    cdef list upgrade


cdef long long _content_length(const unsigned char* p, Py_ssize_t a, Py_ssize_t b, int status) except -2:
    cdef long long value = 0
    if a == b or b - a > 19:
        raise ParseError(status, "invalid content-length")
    while a < b:
        if not 48 <= p[a] <= 57:
            raise ParseError(status, "invalid content-length")
        if value > (MAX_CONTENT_LENGTH - (p[a] - 48)) // 10:
            raise ParseError(status, "invalid content-length")
        value = value * 10 + (p[a] - 48)
        a += 1
    return value


cdef _Fields _field_lines(
    const unsigned char* p, Py_ssize_t a, Py_ssize_t b, list headers, Py_ssize_t max_headers,
    int status, int size_status,
):
    """Fields of the lines in p[a:b] (separated by CRLF), appended to headers;
    the twin's ``_field_lines``."""
    cdef Py_ssize_t count = 1, i = _find_crlf(p, a, b), stop, size
    cdef _Fields info = _Fields()
    cdef long long length
    cdef tuple field
    cdef bytes name, value
    while i >= 0:
        count += 1
        i = _find_crlf(p, i + 2, b)
    if count > max_headers:
        raise ParseError(size_status, "too many header fields")
    info.content_length = -1
    info.connection = []
    while True:
        stop = _find_crlf(p, a, b)
        if stop < 0:
            stop = b
        field = _field_line(p, a, stop, status)
        headers.append(field)
        size = PyBytes_GET_SIZE(field[0])
        if size == 14 and _lower_eq(p, a, b"content-length", 14):
            value = field[1]
            length = _content_length(<const unsigned char*>PyBytes_AS_STRING(value), 0,
                                     PyBytes_GET_SIZE(value), status)
            if info.content_length >= 0 and length != info.content_length:
                raise ParseError(status, "conflicting content-length")
            if info.te is not None:
                raise ParseError(status, "both transfer-encoding and content-length")
            info.content_length = length
        elif size == 17 and _lower_eq(p, a, b"transfer-encoding", 17):
            if info.content_length >= 0:
                raise ParseError(status, "both transfer-encoding and content-length")
            if info.te is None:
                info.te = []
            info.te.extend(_codings(field[1], status))
        elif size == 10 and _lower_eq(p, a, b"connection", 10):
            info.connection.extend(_list_tokens(field[1], status, "connection"))
        elif size == 4 and status == 400 and _lower_eq(p, a, b"host", 4):
            if info.has_host:
                raise ParseError(400, "more than one host")
            value = field[1]
            if not _all_in(<const unsigned char*>PyBytes_AS_STRING(value), 0,
                           PyBytes_GET_SIZE(value), C_HOST):
                raise ParseError(400, "invalid host")
            info.host = value
            info.has_host = True
        elif size == 6 and _lower_eq(p, a, b"expect", 6):
            info.expect = info.expect or field[1].lower() == b"100-continue"
        elif size == 7 and _lower_eq(p, a, b"upgrade", 7):
            if info.upgrade is None:
                info.upgrade = []
            info.upgrade.append(field[1])
        if stop == b:
            return info
        a = stop + 2


cdef bint _transfer_coding(list te, int status) except -1:
    if not te:
        raise ParseError(status, "invalid transfer-encoding")
    if te.count(b"chunked") > 1:
        raise ParseError(status, "chunked applied more than once")
    return te[len(te) - 1] == b"chunked"


cdef int _version(const unsigned char* p, Py_ssize_t a, Py_ssize_t b, int status) except -1:
    if b - a == 8 and memcmp(p + a, b"HTTP/1.", 7) == 0:
        if p[a + 7] == 49:
            return 11
        if p[a + 7] == 48:
            return 10
    if (
        b - a == 8
        and memcmp(p + a, b"HTTP/", 5) == 0
        and 48 <= p[a + 5] <= 57
        and p[a + 6] == 46
        and 48 <= p[a + 7] <= 57
    ):
        raise ParseError(505 if status == 400 else status, "http version not supported")
    raise ParseError(status, "invalid http version")


cdef int _version_prefix(const unsigned char* p, Py_ssize_t a, Py_ssize_t b, int status) except -1:
    cdef Py_ssize_t i
    cdef bint ok
    if b - a > 8:
        raise ParseError(status, "invalid http version")
    if b - a == 8:
        _version(p, a, b, status)
        return 0
    for i in range(b - a):
        if i < 5:
            ok = p[a + i] == b"HTTP/"[i]
        elif i == 6:
            ok = p[a + i] == 46
        else:
            ok = 48 <= p[a + i] <= 57
        if not ok:
            raise ParseError(status, "invalid http version")
    return 0


def _check_target(bytes method, bytes target):
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
    elif target[0] == 47:
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


cdef int _check_partial_field(const unsigned char* p, Py_ssize_t a, Py_ssize_t b, int status) except -1:
    cdef const unsigned char* hit
    cdef Py_ssize_t colon
    if b > a and p[b - 1] == 13:
        b -= 1
    if a == b:
        return 0
    if p[a] == 32 or p[a] == 9:
        raise ParseError(status, "obsolete line folding")
    hit = <const unsigned char*>memchr(p + a, 58, b - a)
    colon = -1 if hit == NULL else hit - p
    if colon == a or not _all_in(p, a, b if colon < 0 else colon, C_TOKEN):
        raise ParseError(status, "invalid header name")
    if colon > a and not _all_in(p, colon + 1, b, C_VALUE):
        raise ParseError(status, "invalid header value")
    return 0


cdef Py_ssize_t _skip_empty_lines(
    const unsigned char* p, Py_ssize_t n, Py_ssize_t start, Py_ssize_t max_head, int size_status
) except -1:
    cdef Py_ssize_t pos = start
    while pos + 1 < n and p[pos] == 13 and p[pos + 1] == 10:
        pos += 2
        if pos - start > max_head:
            raise ParseError(size_status, "header section too large")
    return pos


cdef tuple _request_line(const unsigned char* p, Py_ssize_t a, Py_ssize_t b):
    cdef const unsigned char* hit = <const unsigned char*>memchr(p + a, 32, b - a)
    cdef Py_ssize_t sp1 = -1 if hit == NULL else hit - p, sp2 = -1
    cdef bytes method, target
    if sp1 > a:
        hit = <const unsigned char*>memchr(p + sp1 + 1, 32, b - sp1 - 1)
        sp2 = -1 if hit == NULL else hit - p
    if sp2 < 0:
        raise ParseError(400, "invalid request line")
    if not _all_in(p, a, sp1, C_TOKEN):
        raise ParseError(400, "invalid method")
    method = PyBytes_FromStringAndSize(<const char*>p + a, sp1 - a)
    target = PyBytes_FromStringAndSize(<const char*>p + sp1 + 1, sp2 - sp1 - 1)
    if sp2 - sp1 - 1 < 1 or not _all_in(p, sp1 + 1, sp2, C_VCHAR):
        raise ParseError(400, "invalid request target")
    if p[sp1 + 1] != 47 or (sp1 - a == 7 and memcmp(p + a, b"CONNECT", 7) == 0):
        _check_target(method, target)
    return method, target, _version(p, sp2 + 1, b, 400)


cdef int _partial_request_line(const unsigned char* p, Py_ssize_t a, Py_ssize_t b) except -1:
    cdef Py_ssize_t i = a
    if b > a and p[b - 1] == 13:
        b -= 1
    while i < b and p[i] != 32:
        if not C_TOKEN[p[i]]:
            raise ParseError(400, "invalid method")
        i += 1
    if i == b:
        return 0
    if i == a:
        raise ParseError(400, "invalid method")
    a = i = i + 1
    while i < b and p[i] != 32:
        if not C_VCHAR[p[i]]:
            raise ParseError(400, "invalid request target")
        i += 1
    if i == b:
        return 0
    if i == a:
        raise ParseError(400, "invalid request target")
    return _version_prefix(p, i + 1, b, 400)


def parse_request_head(
    buf, Py_ssize_t start=0, Py_ssize_t max_head=DEFAULT_MAX_HEAD,
    Py_ssize_t max_headers=DEFAULT_MAX_HEADERS,
):
    cdef Py_ssize_t n, pos, end, first, last
    cdef const unsigned char* p = _pointer(buf, &n)
    cdef RequestHead head
    cdef _Fields info
    cdef tuple line
    cdef list headers
    if start < 0 or start > n:
        raise ValueError("start is outside the buffer")
    pos = _skip_empty_lines(p, n, start, max_head, 431)
    end = _find_blank(p, pos, n)
    if end < 0:
        if n - start > max_head:
            raise ParseError(431, "header section too large")
        first = _find_crlf(p, pos, n)
        if first < 0:
            _partial_request_line(p, pos, n)
        else:
            _request_line(p, pos, first)
            last = _rfind_crlf(p, pos, n)
            if last > first:
                _field_lines(p, first + 2, last, [], max_headers, 400, 431)
            _check_partial_field(p, last + 2, n, 400)
        return None
    if end + 4 - start > max_head:
        raise ParseError(431, "header section too large")
    first = _find_crlf(p, pos, end + 2)
    line = _request_line(p, pos, first)
    head = RequestHead.__new__(RequestHead)
    head.method = line[0]
    head.target = line[1]
    head.version = line[2]
    headers = []
    if first < end:
        info = _field_lines(p, first + 2, end, headers, max_headers, 400, 431)
    else:
        info = _Fields()
        info.content_length = -1
        info.connection = []
    head.headers = headers
    conn = tuple(info.connection) if info.connection else ()
    head.connection = conn
    head.body = C_BODY_NONE
    head.content_length = -1
    if info.te is not None:
        if head.version == 10:
            raise ParseError(400, "transfer-encoding in http/1.0")
        if not _transfer_coding(info.te, 400):
            raise ParseError(501, "unsupported transfer-encoding")
        head.body = C_BODY_CHUNKED
    elif info.content_length >= 0:
        head.body = C_BODY_LENGTH
        head.content_length = info.content_length
    if head.method == b"CONNECT":
        head.body = C_BODY_NONE
        head.content_length = -1
    if info.has_host:
        head.host = info.host
    elif head.version == 11:
        raise ParseError(400, "missing host")
    if head.version == 11:
        head.keep_alive = b"close" not in conn
    else:
        head.keep_alive = b"keep-alive" in conn and b"close" not in conn
    head.expect_continue = info.expect
    if info.upgrade is not None and b"upgrade" in conn:
        head.upgrade = b", ".join(info.upgrade)
    return head, end + 4


include "_fastpath_response.pxi"
include "_fastpath_chunked.pxi"
include "_fastpath_split.pxi"
include "_fastpath_trace.pxi"
include "_fastpath_head.pxi"
include "_fastpath_tally.pxi"
