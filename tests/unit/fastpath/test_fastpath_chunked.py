"""ChunkedDecoder: sizes, extensions, trailers, limits, and any split of input."""

from __future__ import annotations

from types import ModuleType

import pytest

BODY = b'5;a=b;c\r\nhello\r\n6;q="x\\"y; z"\r\n world\r\n0\r\nVary: *\r\nX-T:  v \r\n\r\n'


def decode(fp: ModuleType, chunks: list[bytes], **kw: object) -> tuple[bytes, int, object]:
    dec = fp.ChunkedDecoder(**kw)
    out, used = b"", 0
    for chunk in chunks:
        pieces, consumed = dec.feed(chunk)
        out += b"".join(pieces)
        used += consumed
        assert all(isinstance(p, bytes) for p in pieces)
    return out, used, dec


def refused(fp: ModuleType, data: bytes, **kw: object) -> int:
    dec = fp.ChunkedDecoder(**kw)
    with pytest.raises(fp.ParseError) as info:
        dec.feed(data)
    return int(info.value.status)


def test_body_extensions_and_trailers(fastpath: ModuleType) -> None:
    out, used, dec = decode(fastpath, [BODY + b"NEXT"])
    assert out == b"hello world"
    assert used == len(BODY)
    assert dec.done and dec.trailers == [(b"Vary", b"*"), (b"X-T", b"v")]


def test_any_split_of_the_input_gives_the_same_result(fastpath: ModuleType) -> None:
    for cut in range(len(BODY) + 1):
        out, used, dec = decode(fastpath, [BODY[:cut], BODY[cut:] + b"GET"])
        assert (out, used, dec.done) == (b"hello world", len(BODY), True), cut
    out, used, dec = decode(fastpath, [BODY[i : i + 1] for i in range(len(BODY))])
    assert (out, used, len(dec.trailers)) == (b"hello world", len(BODY), 2)


def test_consumed_is_whole_feed_until_done(fastpath: ModuleType) -> None:
    dec = fastpath.ChunkedDecoder()
    assert dec.feed(b"3\r\nab") == ([b"ab"], 5)
    assert not dec.done
    assert dec.feed(b"c\r\n0\r\n\r\nrest") == ([b"c"], 8)
    assert dec.done
    assert dec.feed(b"more") == ([], 0)


def test_zero_padded_and_upper_case_sizes(fastpath: ModuleType) -> None:
    assert decode(fastpath, [b"000A\r\n0123456789\r\n000\r\n\r\n"])[0] == b"0123456789"


def test_sixteen_hex_digits_are_the_limit(fastpath: ModuleType) -> None:
    dec = fastpath.ChunkedDecoder()
    assert dec.feed(b"7fffffffffffffff\r\nab") == ([b"ab"], 20)
    assert refused(fastpath, b"8000000000000000\r\n") == 400
    assert refused(fastpath, b"00000000000000001\r\n") == 400
    for i in range(1, 18):  # split inside the digits
        dec = fastpath.ChunkedDecoder()
        with pytest.raises(fastpath.ParseError):
            dec.feed(b"00000000000000001"[:i])
            dec.feed(b"00000000000000001"[i:] + b"\r\n")


@pytest.mark.parametrize(
    "data",
    [
        b"\r\n",
        b"g\r\n",
        b"5 \r\n",
        b"5\t;a\r\n",
        b"5;\r\n",
        b"5;a=\r\n",
        b"5;a b\r\n",
        b'5;a="b\r\n',
        b'5;a="b"c\r\n',
        b"5;=b\r\n",
        b"5\r\r\n",
        b"5\n",
        b"-5\r\n",
        b"0x5\r\n",
        b"5\r\nhelloX\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"0\r\nX: a\n\r\n",
        b"0\r\nX : a\r\n\r\n",
        b"0\r\n folded\r\n\r\n",
        b"0\r\nX: a\x00\r\n\r\n",
        b"0\r\n\n",
    ],
)
def test_malformed_chunked_body_is_refused(fastpath: ModuleType, data: bytes) -> None:
    assert refused(fastpath, data) == 400
    assert refused(fastpath, data, response=True) == 502


def test_a_failed_decoder_stays_failed(fastpath: ModuleType) -> None:
    dec = fastpath.ChunkedDecoder()
    with pytest.raises(fastpath.ParseError):
        dec.feed(b"z")
    with pytest.raises(fastpath.ParseError):
        dec.feed(b"0\r\n\r\n")


def test_trailers_are_bounded(fastpath: ModuleType) -> None:
    body = b"0\r\nX: " + b"a" * 100 + b"\r\n\r\n"
    assert decode(fastpath, [body], max_trailer_size=len(body) - 3)[2].done
    assert refused(fastpath, body, max_trailer_size=50) == 431
    assert refused(fastpath, body, max_trailer_size=50, response=True) == 502
    many = b"0\r\n" + b"X: y\r\n" * 101 + b"\r\n"
    assert refused(fastpath, many) == 400


def test_chunk_extensions_are_bounded(fastpath: ModuleType) -> None:
    assert refused(fastpath, b"1;" + b"a" * 5000 + b"\r\n") == 400


def test_large_chunk_is_passed_through_in_pieces(fastpath: ModuleType) -> None:
    dec = fastpath.ChunkedDecoder()
    data = b"x" * 100_000
    pieces, used = dec.feed(b"186a0\r\n" + data[:60_000])
    assert used == 60_007
    pieces2, used2 = dec.feed(data[60_000:] + b"\r\n0\r\n\r\n")
    assert b"".join(pieces + pieces2) == data and dec.done
    assert used2 == 40_000 + 7
