# The upstream request head as received plus our fields, of ``_fastpath.pyx``
# (included there; twin of ``_fastpath_head_py``, whose docstring is the
# reference): one scan of the field names and one copy of the bytes.

# The fixed hop-by-hop names (the parser's list) and the ones the proxy sets.
cdef tuple _RAW_REWRITE = (
    *sorted(_HOP_BY_HOP), b"x-forwarded-for", b"x-forwarded-proto", b"x-request-id"
)
RAW_REWRITE = frozenset(_RAW_REWRITE)
cdef bytes _XFF_LINE = b"X-Forwarded-For: "
cdef bytes _XFP_RID_LINE = b"\r\nX-Forwarded-Proto: http\r\nX-Request-Id: "


cdef inline unsigned char _lower(unsigned char c):
    return c + 32 if 65 <= c <= 90 else c


cdef bint _same_name(bytes a, bytes b):
    """Whether two field names are equal, ignoring ASCII case."""
    cdef Py_ssize_t size = PyBytes_GET_SIZE(a)
    cdef Py_ssize_t i
    cdef const unsigned char* p
    cdef const unsigned char* q
    if PyBytes_GET_SIZE(b) != size:
        return False
    p = <const unsigned char*>PyBytes_AS_STRING(a)
    q = <const unsigned char*>PyBytes_AS_STRING(b)
    for i in range(size):
        if _lower(p[i]) != _lower(q[i]):
            return False
    return True


cdef inline char* _put(char* out, bytes data):
    cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
    memcpy(out, PyBytes_AS_STRING(data), size)
    return out + size


def raw_request_head(RequestHead head, bytes raw, bytes client_ip, bytes request_id, list extra):
    """``raw`` with our fields appended, or None when the head must be rebuilt."""
    cdef Py_ssize_t size = PyBytes_GET_SIZE(raw)
    cdef const char* text = PyBytes_AS_STRING(raw)
    cdef Py_ssize_t i, n, total
    cdef int lengths = 0
    cdef bytes name
    cdef tuple pair
    cdef const unsigned char* p
    if head.version != 11 or head.connection or size < 4 or text[0] == 13:
        return None
    if memcmp(text + size - 4, b"\r\n\r\n", 4) != 0:
        return None
    if extra is not None and not extra:
        extra = None
    for pair in head.headers:  # (name, value) tuples, as parsed
        name = <bytes?>pair[0]
        n = PyBytes_GET_SIZE(name)
        p = <const unsigned char*>PyBytes_AS_STRING(name)
        for i in range(len(_RAW_REWRITE)):
            if PyBytes_GET_SIZE(<bytes>_RAW_REWRITE[i]) == n and _lower_eq(
                p, 0, PyBytes_AS_STRING(<bytes>_RAW_REWRITE[i]), n
            ):
                return None
        if n == 14 and _lower_eq(p, 0, b"content-length", 14):
            lengths += 1
            if lengths > 1:
                return None
        if extra is not None:
            for i in range(len(extra)):
                if _same_name(name, <bytes?>(<tuple?>extra[i])[0]):
                    return None
    total = (size - 2 + PyBytes_GET_SIZE(_XFF_LINE) + PyBytes_GET_SIZE(client_ip)
             + PyBytes_GET_SIZE(_XFP_RID_LINE) + PyBytes_GET_SIZE(request_id) + 4)
    if extra is not None:
        for i in range(len(extra)):
            pair = <tuple?>extra[i]
            total += PyBytes_GET_SIZE(<bytes?>pair[0]) + PyBytes_GET_SIZE(<bytes?>pair[1]) + 4
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef char* w = PyBytes_AS_STRING(out)
    memcpy(w, text, size - 2)
    w += size - 2
    w = _put(w, _XFF_LINE)
    w = _put(w, client_ip)
    w = _put(w, _XFP_RID_LINE)
    w = _put(w, request_id)
    w[0] = 13
    w[1] = 10
    w += 2
    if extra is not None:
        for i in range(len(extra)):
            pair = <tuple?>extra[i]
            w = _put(w, <bytes>pair[0])
            w[0] = 58
            w[1] = 32
            w += 2
            w = _put(w, <bytes>pair[1])
            w[0] = 13
            w[1] = 10
            w += 2
    w[0] = 13
    w[1] = 10
    return out
