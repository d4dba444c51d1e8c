# The chunked body decoder of ``_fastpath.pyx`` (included there; twin of
# ``_fastpath_py.ChunkedDecoder``, same states, same errors).

cdef enum:
    S_SIZE_START = 0
    S_SIZE = 1
    S_EXT_NAME_START = 2
    S_EXT_NAME = 3
    S_EXT_VALUE_START = 4
    S_EXT_VALUE = 5
    S_EXT_QUOTED = 6
    S_EXT_QUOTED_ESC = 7
    S_EXT_QUOTED_END = 8
    S_SIZE_LF = 9
    S_DATA = 10
    S_DATA_CR = 11
    S_DATA_LF = 12
    S_TRAILER = 13
    S_DONE = 14
    S_FAILED = 15


cdef class ChunkedDecoder:
    """Incremental decoder of a chunked body (RFC 9112 section 7.1)."""

    cdef int _state
    cdef long long _size
    cdef int _ext
    cdef long long _remaining
    cdef bytearray _line
    cdef Py_ssize_t _trailer_size
    cdef Py_ssize_t _max_trailer_size
    cdef int _status
    cdef public bint done
    cdef public list trailers

    def __init__(self, Py_ssize_t max_trailer_size=DEFAULT_MAX_HEAD, *, bint response=False):
        self._state = S_SIZE_START
        self._size = 0
        self._ext = 0
        self._remaining = 0
        self._line = None  # made on the first trailer byte: most bodies have none
        self._trailer_size = 0
        self._max_trailer_size = max_trailer_size
        self._status = 502 if response else 400
        self.done = False
        self.trailers = []

    cdef object _fail(self, str reason):
        self._state = S_FAILED
        return ParseError(self._status, reason)

    def feed(self, data):
        cdef Py_ssize_t n, pos = 0, take, cr
        cdef const unsigned char* p = _pointer(data, &n)
        cdef int state = self._state, digit
        cdef unsigned char c
        cdef list pieces = []
        cdef unsigned long long size
        if self.done:
            return [], 0
        if state == S_FAILED:
            raise ParseError(self._status, "invalid chunked body")
        while pos < n and state != S_DONE:
            if state == S_DATA:
                take = n - pos
                if self._remaining < take:
                    take = <Py_ssize_t>self._remaining
                pieces.append(PyBytes_FromStringAndSize(<const char*>p + pos, take))
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    state = S_DATA_CR
                continue
            if state == S_SIZE_START:
                # Fast path: a whole, plain size line in this feed.
                cr = _find_crlf(p, pos, pos + 18 if pos + 18 < n else n)
                if cr > pos:
                    size = 0
                    take = pos
                    while take < cr and C_HEX[p[take]] >= 0:
                        size = size * 16 + C_HEX[p[take]]
                        take += 1
                    if take == cr:
                        if size > <unsigned long long>MAX_CONTENT_LENGTH:
                            self._state = S_FAILED
                            raise ParseError(self._status, "chunk size too large")
                        pos = cr + 2
                        state = S_DATA if size else S_TRAILER
                        self._remaining = <long long>size
                        continue
            if state == S_TRAILER:
                self._state = state
                pos = self._trailer(p, pos, n)
                state = self._state
                continue
            c = p[pos]
            pos += 1
            if state == S_DATA_CR:
                if c != 13:
                    raise self._fail("missing CRLF after chunk data")
                state = S_DATA_LF
            elif state == S_DATA_LF:
                if c != 10:
                    raise self._fail("missing CRLF after chunk data")
                state = S_SIZE_START
            elif state == S_SIZE_START or state == S_SIZE:
                digit = C_HEX[c]
                if digit >= 0:
                    self._ext += 1  # counts digits until the size line ends
                    if self._ext > 16 or self._size > (MAX_CONTENT_LENGTH - digit) // 16:
                        raise self._fail("chunk size too large")
                    self._size = self._size * 16 + digit
                    state = S_SIZE
                elif state == S_SIZE and c == 59:
                    self._ext = 0
                    state = S_EXT_NAME_START
                elif state == S_SIZE and c == 13:
                    state = S_SIZE_LF
                else:
                    raise self._fail("invalid chunk size")
            elif state == S_SIZE_LF:
                if c != 10:
                    raise self._fail("invalid chunk size line")
                self._remaining = self._size
                self._size = 0
                self._ext = 0
                state = S_DATA if self._remaining else S_TRAILER
            else:
                self._ext += 1
                if self._ext > MAX_CHUNK_EXT:
                    raise self._fail("chunk extensions too long")
                state = self._extension(state, c)
        self._state = state
        return pieces, (pos if self.done else n)

    cdef int _extension(self, int state, unsigned char c) except -1:
        if state == S_EXT_QUOTED:
            if c == 34:
                return S_EXT_QUOTED_END
            if c == 92:
                return S_EXT_QUOTED_ESC
            if C_QDTEXT[c]:
                return state
        elif state == S_EXT_QUOTED_ESC:
            if C_ESCAPABLE[c]:
                return S_EXT_QUOTED
        elif state == S_EXT_NAME_START:
            if C_TOKEN[c]:
                return S_EXT_NAME
        elif state == S_EXT_VALUE_START:
            if C_TOKEN[c]:
                return S_EXT_VALUE
            if c == 34:
                return S_EXT_QUOTED
        else:  # after a name, a token value or a quoted value
            if c == 59:
                return S_EXT_NAME_START
            if c == 13:
                return S_SIZE_LF
            if state == S_EXT_NAME and c == 61:
                return S_EXT_VALUE_START
            if state != S_EXT_QUOTED_END and C_TOKEN[c]:
                return state
        raise self._fail("invalid chunk extension")

    cdef Py_ssize_t _trailer(self, const unsigned char* p, Py_ssize_t pos, Py_ssize_t n) except -1:
        cdef const unsigned char* hit = <const unsigned char*>memchr(p + pos, 10, n - pos)
        cdef Py_ssize_t stop = n if hit == NULL else hit - p + 1
        cdef Py_ssize_t size
        cdef const unsigned char* q
        self._trailer_size += stop - pos
        if self._trailer_size > self._max_trailer_size:
            self._state = S_FAILED
            raise ParseError(431 if self._status == 400 else self._status, "trailers too large")
        if self._line is None:
            self._line = bytearray()
        self._line += PyBytes_FromStringAndSize(<const char*>p + pos, stop - pos)
        if hit == NULL:
            return stop
        line = bytes(self._line)
        self._line.clear()
        size = PyBytes_GET_SIZE(line)
        q = <const unsigned char*>PyBytes_AS_STRING(line)
        if size < 2 or q[size - 2] != 13:
            raise self._fail("invalid trailer line")
        if size == 2:
            self.done = True
            self._state = S_DONE
            return stop
        try:
            self.trailers.append(_field_line(q, 0, size - 2, self._status))
        except ParseError:
            self._state = S_FAILED
            raise
        if len(self.trailers) > DEFAULT_MAX_HEADERS:
            raise self._fail("too many trailer fields")
        return stop
