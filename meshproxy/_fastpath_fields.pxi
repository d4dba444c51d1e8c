# Field rules and header helpers of ``_fastpath.pyx`` (included there; twin of
# ``_fastpath_fields_py``).

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


def _list_tokens(bytes value, int status, str what):
    if value == b"keep-alive" or value == b"close":
        return [value]
    out = []
    for item in value.split(b","):
        item = item.strip(_OWS)
        if item:
            if item.translate(None, _TOKEN):
                raise ParseError(status, f"invalid {what}")
            out.append(item.lower())
    return out


def _codings(bytes value, int status):
    if value == b"chunked":
        return [value]
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


cdef tuple _field_line(const unsigned char* p, Py_ssize_t a, Py_ssize_t b, int status):
    """(name, value) of the field line p[a:b]; the twin's ``_field_line``."""
    cdef const unsigned char* hit = <const unsigned char*>memchr(p + a, 58, b - a)
    cdef Py_ssize_t colon = -1 if hit == NULL else hit - p
    cdef Py_ssize_t v, e
    if colon <= a:
        if a < b and (p[a] == 32 or p[a] == 9):
            raise ParseError(status, "obsolete line folding")
        raise ParseError(status, "invalid header field")
    if not _all_in(p, a, colon, C_TOKEN):
        raise ParseError(status, "invalid header name")
    v = colon + 1
    e = b
    while v < e and (p[v] == 32 or p[v] == 9):
        v += 1
    while e > v and (p[e - 1] == 32 or p[e - 1] == 9):
        e -= 1
    if not _all_in(p, v, e, C_VALUE):
        raise ParseError(status, "invalid header value")
    return (
        PyBytes_FromStringAndSize(<const char*>p + a, colon - a),
        PyBytes_FromStringAndSize(<const char*>p + v, e - v),
    )


def is_token(bytes data):
    """Whether ``data`` is a non-empty RFC 9110 token (a field name, a method)."""
    return bool(data) and not data.translate(None, _TOKEN)


def is_field_value(bytes data):
    """Whether ``data`` may be sent as a field value: no CR, LF, NUL or other
    controls except HTAB, and no leading or trailing whitespace."""
    if data.translate(None, _FIELD_VALUE):
        return False
    return not data or (data[0] not in _OWS and data[len(data) - 1] not in _OWS)


def header_value(list headers, bytes lname):
    """The first value of the field named ``lname`` (lower-case), or None."""
    cdef Py_ssize_t size = len(lname)
    cdef bytes name
    for name, value in headers:
        if PyBytes_GET_SIZE(name) == size and _lower_eq(
            <const unsigned char*>PyBytes_AS_STRING(name), 0, PyBytes_AS_STRING(lname), size
        ):
            return value
    return None


def is_hop_by_hop(bytes lname, tuple connection):
    """Whether the lower-cased field name ``lname`` belongs to one hop only."""
    return lname in _HOP_BY_HOP or lname in connection


cdef inline bint _hop_length(Py_ssize_t size, tuple connection):
    # The fixed names are 2, 7, 10 and 16-19 bytes long.
    cdef Py_ssize_t i
    if size == 2 or size == 7 or size == 10 or 16 <= size <= 19:
        return True
    for i in range(len(connection)):
        if PyBytes_GET_SIZE(<bytes?>connection[i]) == size:
            return True
    return False


def hop_by_hop_fields(list headers, tuple connection):
    """The hop-by-hop fields of ``headers`` as (lower-cased name, value), in order."""
    cdef list out = []
    cdef bytes name
    for name, value in headers:
        if _hop_length(PyBytes_GET_SIZE(name), connection):
            lname = name.lower()
            if lname in _HOP_BY_HOP or lname in connection:
                out.append((lname, value))
    return out


def end_to_end_headers(list headers, tuple connection):
    """``headers`` without the hop-by-hop fields, in their original order."""
    return [(n, v) for n, v in headers if not is_hop_by_hop(n.lower(), connection)]


def keep_alive_timeout(list headers):
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
