# The response head parser of ``_fastpath.pyx`` (included there; twin of
# ``_fastpath_py.parse_response_head``, same checks, same errors: 502 for what
# an upstream gets wrong).

cdef tuple _status_line(const unsigned char* p, Py_ssize_t a, Py_ssize_t b):
    cdef int version = _version(p, a, a + 8 if b - a > 8 else b, 502)
    cdef Py_ssize_t i
    if (
        b - a < 12
        or p[a + 8] != 32
        or not (48 <= p[a + 9] <= 57 and 48 <= p[a + 10] <= 57 and 48 <= p[a + 11] <= 57)
        or p[a + 9] == 48
    ):
        raise ParseError(502, "invalid status line")
    if b - a > 12 and p[a + 12] != 32:
        raise ParseError(502, "invalid status line")
    i = a + 13 if b - a > 13 else b
    if not _all_in(p, i, b, C_VALUE):
        raise ParseError(502, "invalid reason phrase")
    status = (p[a + 9] - 48) * 100 + (p[a + 10] - 48) * 10 + (p[a + 11] - 48)
    return version, status, PyBytes_FromStringAndSize(<const char*>p + i, b - i)


cdef int _partial_status_line(const unsigned char* p, Py_ssize_t a, Py_ssize_t b) except -1:
    cdef Py_ssize_t i
    if b > a and p[b - 1] == 13:
        b -= 1
    _version_prefix(p, a, a + 8 if b - a > 8 else b, 502)
    if b - a > 8:
        if p[a + 8] != 32 or (b - a > 9 and p[a + 9] == 48):
            raise ParseError(502, "invalid status line")
        for i in range(a + 9, a + 12 if b - a > 12 else b):
            if not 48 <= p[i] <= 57:
                raise ParseError(502, "invalid status line")
        if b - a > 12 and (p[a + 12] != 32 or not _all_in(p, a + 13, b, C_VALUE)):
            raise ParseError(502, "invalid status line")
    return 0


def parse_response_head(
    buf, Py_ssize_t start=0, bytes request_method=b"GET", Py_ssize_t max_head=DEFAULT_MAX_HEAD,
    Py_ssize_t max_headers=DEFAULT_MAX_HEADERS,
):
    cdef Py_ssize_t n, pos, end, first, last
    cdef const unsigned char* p = _pointer(buf, &n)
    cdef ResponseHead head
    cdef _Fields info
    cdef tuple line
    cdef list headers
    cdef int status
    if start < 0 or start > n:
        raise ValueError("start is outside the buffer")
    pos = _skip_empty_lines(p, n, start, max_head, 502)
    end = _find_blank(p, pos, n)
    if end < 0:
        if n - start > max_head:
            raise ParseError(502, "header section too large")
        first = _find_crlf(p, pos, n)
        if first < 0:
            _partial_status_line(p, pos, n)
        else:
            _status_line(p, pos, first)
            last = _rfind_crlf(p, pos, n)
            if last > first:
                _field_lines(p, first + 2, last, [], max_headers, 502, 502)
            _check_partial_field(p, last + 2, n, 502)
        return None
    if end + 4 - start > max_head:
        raise ParseError(502, "header section too large")
    first = _find_crlf(p, pos, end + 2)
    line = _status_line(p, pos, first)
    head = ResponseHead.__new__(ResponseHead)
    head.version = line[0]
    head.status = status = line[1]
    head.reason = line[2]
    headers = []
    if first < end:
        info = _field_lines(p, first + 2, end, headers, max_headers, 502, 502)
    else:
        info = _Fields()
        info.content_length = -1
        info.connection = []
    head.headers = headers
    conn = tuple(info.connection) if info.connection else ()
    head.connection = conn
    if head.version == 11:
        head.keep_alive = b"close" not in conn
    else:
        head.keep_alive = b"keep-alive" in conn and b"close" not in conn
    head.body = C_BODY_UNTIL_CLOSE
    head.content_length = -1
    if info.te is not None:
        if _transfer_coding(info.te, 502):
            head.body = C_BODY_CHUNKED
        if head.version == 10:
            # RFC 9112 section 6.1: faulty framing; close after this message.
            head.keep_alive = False
    elif info.content_length >= 0:
        head.body = C_BODY_LENGTH
        head.content_length = info.content_length
    if status == 101 or (request_method == b"CONNECT" and 200 <= status < 300):
        head.body = C_BODY_TUNNEL
        head.content_length = -1
    elif request_method == b"HEAD" or status < 200 or status == 204 or status == 304:
        head.body = C_BODY_NONE
        head.content_length = -1
    elif head.body == C_BODY_UNTIL_CLOSE:
        head.keep_alive = False
    return head, end + 4
