"""The chunked body decoder of the pure-Python fast path (RFC 9112 section 7.1).

Part of ``_fastpath_py``, which re-exports ``ChunkedDecoder``; twin of
``_fastpath_chunked.pxi``.  Bytes in, payload pieces out: no I/O, no clocks.
"""

from __future__ import annotations

from meshproxy._fastpath_fields_py import (
    _FIELD_VALUE,
    _HEX,
    _MAX_CONTENT_LENGTH,
    _TOKEN,
    DEFAULT_MAX_HEAD,
    DEFAULT_MAX_HEADERS,
    ParseError,
    _field_line,
)

_MAX_CHUNK_EXT = 4096  # bytes of extensions on one chunk-size line

# ChunkedDecoder states.  The size line is read byte by byte so that any split
# of the input works without re-scanning; chunk data is sliced in bulk.
_SIZE_START = 0
_SIZE = 1
_EXT_NAME_START = 2
_EXT_NAME = 3
_EXT_VALUE_START = 4
_EXT_VALUE = 5
_EXT_QUOTED = 6
_EXT_QUOTED_ESC = 7
_EXT_QUOTED_END = 8
_SIZE_LF = 9
_DATA = 10
_DATA_CR = 11
_DATA_LF = 12
_TRAILER = 13
_DONE = 14
_FAILED = 15

_QDTEXT = frozenset(
    b"\t !" + bytes(range(0x23, 0x5C)) + bytes(range(0x5D, 0x7F)) + bytes(range(0x80, 0x100))
)
_ESCAPABLE = frozenset(_FIELD_VALUE)
_TOKEN_SET = frozenset(_TOKEN)
_HEX_VALUE = {c: int(chr(c), 16) for c in _HEX}


class ChunkedDecoder:
    """Incremental decoder of a chunked body (RFC 9112 section 7.1)."""

    __slots__ = (
        "_ext",
        "_line",
        "_max_trailer_size",
        "_remaining",
        "_size",
        "_state",
        "_status",
        "_trailer_size",
        "done",
        "trailers",
    )

    def __init__(self, max_trailer_size: int = DEFAULT_MAX_HEAD, *, response: bool = False) -> None:
        self._state = _SIZE_START
        self._size = 0
        self._ext = 0
        self._remaining = 0
        self._line = bytearray()
        self._trailer_size = 0
        self._max_trailer_size = max_trailer_size
        self._status = 502 if response else 400
        self.done = False
        self.trailers: list[tuple[bytes, bytes]] = []

    def _fail(self, reason: str) -> ParseError:
        self._state = _FAILED
        return ParseError(self._status, reason)

    def feed(self, data: bytes) -> tuple[list[bytes], int]:
        if self.done:
            return [], 0
        if self._state == _FAILED:
            raise ParseError(self._status, "invalid chunked body")
        pieces: list[bytes] = []
        n = len(data)
        pos = 0
        state = self._state
        while pos < n and state != _DONE:  # the trailer step raises or sets _DONE
            if state == _DATA:
                take = min(self._remaining, n - pos)
                pieces.append(bytes(data[pos : pos + take]))
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    state = _DATA_CR
                continue
            if state == _SIZE_START:
                # Fast path: a whole, plain size line in this feed.
                cr = data.find(b"\r\n", pos, pos + 18)
                if cr > pos and not data[pos:cr].translate(None, _HEX):
                    size = int(data[pos:cr], 16)
                    if size > _MAX_CONTENT_LENGTH:
                        raise self._fail("chunk size too large")
                    pos = cr + 2
                    state = _DATA if size else _TRAILER
                    self._remaining = size
                    continue
            if state == _TRAILER:
                state, pos = self._trailer(data, pos)
                continue
            c = data[pos]
            pos += 1
            if state == _DATA_CR:
                if c != 13:
                    raise self._fail("missing CRLF after chunk data")
                state = _DATA_LF
            elif state == _DATA_LF:
                if c != 10:
                    raise self._fail("missing CRLF after chunk data")
                state = _SIZE_START
            elif state in (_SIZE_START, _SIZE):
                digit = _HEX_VALUE.get(c)
                if digit is not None:
                    self._ext += 1  # counts digits until the size line ends
                    size = self._size * 16 + digit
                    if size > _MAX_CONTENT_LENGTH or self._ext > 16:
                        raise self._fail("chunk size too large")
                    self._size = size
                    state = _SIZE
                elif state == _SIZE and c == 59:  # ;
                    self._ext = 0
                    state = _EXT_NAME_START
                elif state == _SIZE and c == 13:
                    state = _SIZE_LF
                else:
                    raise self._fail("invalid chunk size")
            elif state == _SIZE_LF:
                if c != 10:
                    raise self._fail("invalid chunk size line")
                self._remaining = self._size
                self._size = 0
                self._ext = 0
                state = _DATA if self._remaining else _TRAILER
            else:
                self._ext += 1
                if self._ext > _MAX_CHUNK_EXT:
                    raise self._fail("chunk extensions too long")
                state = self._extension(state, c)
        self._state = state
        return pieces, (pos if self.done else n)

    def _extension(self, state: int, c: int) -> int:
        if state == _EXT_QUOTED:
            if c == 34:
                return _EXT_QUOTED_END
            if c == 92:
                return _EXT_QUOTED_ESC
            if c in _QDTEXT:
                return state
        elif state == _EXT_QUOTED_ESC:
            if c in _ESCAPABLE:
                return _EXT_QUOTED
        elif state == _EXT_NAME_START:
            if c in _TOKEN_SET:
                return _EXT_NAME
        elif state == _EXT_VALUE_START:
            if c in _TOKEN_SET:
                return _EXT_VALUE
            if c == 34:
                return _EXT_QUOTED
        else:  # after a name, a token value or a quoted value
            if c == 59:
                return _EXT_NAME_START
            if c == 13:
                return _SIZE_LF
            if state == _EXT_NAME and c == 61:
                return _EXT_VALUE_START
            if state != _EXT_QUOTED_END and c in _TOKEN_SET:
                return state
        raise self._fail("invalid chunk extension")

    def _trailer(self, data: bytes, pos: int) -> tuple[int, int]:
        lf = data.find(b"\n", pos)
        stop = len(data) if lf < 0 else lf + 1
        self._trailer_size += stop - pos
        if self._trailer_size > self._max_trailer_size:
            self._state = _FAILED
            raise ParseError(431 if self._status == 400 else self._status, "trailers too large")
        self._line += data[pos:stop]
        if lf < 0:
            return _TRAILER, stop
        line = bytes(self._line)
        self._line.clear()
        if len(line) < 2 or line[-2] != 13:
            raise self._fail("invalid trailer line")
        if len(line) == 2:
            self.done = True
            return _DONE, stop
        try:
            self.trailers.append(_field_line(line[:-2], self._status))
        except ParseError:
            self._state = _FAILED
            raise
        if len(self.trailers) > DEFAULT_MAX_HEADERS:
            raise self._fail("too many trailer fields")
        return _TRAILER, stop
