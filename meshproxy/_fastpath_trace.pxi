# New W3C ``traceparent`` values of ``_fastpath.pyx`` (included there; twin of
# ``_fastpath_trace_py.TraceIds``: same pool size, same bytes per id, same
# order, so the same entropy gives the same values).

cdef Py_ssize_t TRACE_POOL = 4080
cdef const char* _HEX_DIGITS = b"0123456789abcdef"
cdef enum:
    _SAMPLE_BELOW = 0  # the low 64 bits of the trace id below the bound
    _SAMPLE_ALL = 1
    _SAMPLE_NONE = 2


cdef inline bint _all_zero(const unsigned char* p, Py_ssize_t n):
    cdef Py_ssize_t i
    for i in range(n):
        if p[i]:
            return False
    return True


cdef class TraceIds:
    """A pool of entropy turned into ``traceparent`` values (see the twin)."""

    cdef object _entropy
    cdef bytes _pool
    cdef Py_ssize_t _pos
    cdef object __weakref__

    def __init__(self, entropy):
        self._entropy = entropy
        self._pool = b""
        self._pos = 0

    def reset(self):
        self._pool = b""
        self._pos = 0

    cdef const unsigned char* _next(self) except NULL:
        cdef const unsigned char* src
        cdef object pool
        while True:
            if self._pos + 24 > PyBytes_GET_SIZE(self._pool):
                pool = self._entropy(TRACE_POOL)
                if type(pool) is not bytes or PyBytes_GET_SIZE(pool) != TRACE_POOL:
                    raise ValueError(f"entropy must return {TRACE_POOL} bytes")
                self._pool = pool
                self._pos = 0
            src = <const unsigned char*>PyBytes_AS_STRING(self._pool) + self._pos
            self._pos += 24
            if not _all_zero(src, 16) and not _all_zero(src + 16, 8):
                return src

    def traceparent(self, bound):
        if bound >= 18446744073709551616:
            return self._value(_SAMPLE_ALL, 0)
        if bound <= 0:
            return self._value(_SAMPLE_NONE, 0)
        return self._value(_SAMPLE_BELOW, <uint64_t>bound)

    cdef bytes _value(self, int mode, uint64_t bound):
        cdef Py_ssize_t i
        cdef const unsigned char* src = self._next()
        cdef uint64_t low = 0
        cdef bint sampled
        for i in range(8, 16):
            low = (low << 8) | src[i]
        if mode == _SAMPLE_BELOW:
            sampled = low < bound
        else:
            sampled = mode == _SAMPLE_ALL
        cdef bytes value = PyBytes_FromStringAndSize(NULL, 55)
        cdef char* out = PyBytes_AS_STRING(value)
        out[0] = 48
        out[1] = 48
        out[2] = 45
        for i in range(16):
            out[3 + 2 * i] = _HEX_DIGITS[src[i] >> 4]
            out[4 + 2 * i] = _HEX_DIGITS[src[i] & 15]
        out[35] = 45
        for i in range(8):
            out[36 + 2 * i] = _HEX_DIGITS[src[16 + i] >> 4]
            out[37 + 2 * i] = _HEX_DIGITS[src[16 + i] & 15]
        out[52] = 45
        out[53] = 48
        out[54] = 49 if sampled else 48
        return value


cdef bint _is_trace_name(bytes name, tuple names):
    cdef Py_ssize_t size = PyBytes_GET_SIZE(name)
    cdef Py_ssize_t i
    cdef bytes candidate
    for i in range(len(names)):
        candidate = <bytes>names[i]
        if PyBytes_GET_SIZE(candidate) == size and _lower_eq(
            <const unsigned char*>PyBytes_AS_STRING(name), 0, PyBytes_AS_STRING(candidate), size
        ):
            return True
    return False


cdef class TraceStart:
    """The observer's ``exchange_started`` when tracing starts W3C traces (see the twin)."""

    cdef TraceIds _ids
    cdef int _mode
    cdef uint64_t _bound
    cdef object _carried
    cdef bint _always
    cdef tuple _names

    def __init__(self, TraceIds ids, bound, carried, bint always, names):
        self._ids = ids
        if bound >= 18446744073709551616:
            self._mode, self._bound = _SAMPLE_ALL, 0
        elif bound <= 0:
            self._mode, self._bound = _SAMPLE_NONE, 0
        else:
            self._mode, self._bound = _SAMPLE_BELOW, <uint64_t>bound
        self._carried = carried
        self._always = always
        self._names = tuple(name.lower() for name in names)

    def __call__(self, exchange, list headers):
        cdef tuple pair
        for pair in headers:
            if _is_trace_name(<bytes>pair[0], self._names):
                return self._carried(exchange, headers)
        cdef bytes value = self._ids._value(self._mode, self._bound)
        cdef const char* text = PyBytes_AS_STRING(value)
        cdef bint sampled = text[54] == 49
        if sampled or self._always:
            exchange.trace_id = PyUnicode_DecodeASCII(text + 3, 32, NULL)
            exchange.span_id = PyUnicode_DecodeASCII(text + 36, 16, NULL)
            exchange.trace_sampled = sampled
            exchange.user_agent = header_value(headers, b"user-agent") or b""
        return [(b"traceparent", value)]


def ratio_bound(double ratio):
    """Twin of ``_fastpath_trace_py.ratio_bound``."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"sampling ratio {ratio} is not in [0, 1]")
    return round(ratio * (1 << 64))
