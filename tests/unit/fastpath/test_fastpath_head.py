"""The upstream head as received plus our fields (``raw_request_head``), in both twins."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproxy.http1.head import REWRITE, build_request_head
from tests.twins import compiled_fastpath

RAW = b"GET /p?q HTTP/1.1\r\nHost: web\r\nAccept: */*\r\n\r\n"
OURS = b"X-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Proto: http\r\nX-Request-Id: rid\r\n"


def head_of(fastpath: ModuleType, raw: bytes):  # type: ignore[no-untyped-def]
    got = fastpath.parse_request_head(raw)
    assert got is not None
    return got[0]


def test_our_fields_and_the_extra_ones_follow_the_head_as_received(fastpath: ModuleType) -> None:
    head = head_of(fastpath, RAW)
    out = fastpath.raw_request_head(head, RAW, b"10.0.0.9", b"rid", None)
    assert out == RAW[:-2] + OURS + b"\r\n"
    assert fastpath.raw_request_head(head, RAW, b"10.0.0.9", b"rid", []) == out
    extra = [(b"traceparent", b"00-1-2-01"), (b"X-Filter", b"yes")]
    out = fastpath.raw_request_head(head, RAW, b"10.0.0.9", b"rid", extra)
    assert out == RAW[:-2] + OURS + b"traceparent: 00-1-2-01\r\nX-Filter: yes\r\n\r\n"


def test_the_fields_that_force_a_rebuild_are_the_head_builders(fastpath: ModuleType) -> None:
    assert fastpath.RAW_REWRITE == REWRITE


@pytest.mark.parametrize("name", sorted(REWRITE))
def test_a_field_we_drop_or_set_forces_a_rebuild_in_any_case(
    fastpath: ModuleType, name: bytes
) -> None:
    value = b"chunked" if name == b"transfer-encoding" else b"x"
    for spelled in (name, name.upper(), name.title()):
        raw = b"GET / HTTP/1.1\r\nHost: w\r\n" + spelled + b": " + value + b"\r\n\r\n"
        head = head_of(fastpath, raw)
        assert fastpath.raw_request_head(head, raw, b"ip", b"rid", None) is None


def test_a_field_named_as_an_extra_one_forces_a_rebuild(fastpath: ModuleType) -> None:
    raw = b"GET / HTTP/1.1\r\nHost: w\r\nTraceParent: 00-old\r\n\r\n"
    head = head_of(fastpath, raw)
    assert fastpath.raw_request_head(head, raw, b"ip", b"r", [(b"traceparent", b"new")]) is None
    assert fastpath.raw_request_head(head, raw, b"ip", b"r", [(b"TRACEPARENT", b"new")]) is None
    assert fastpath.raw_request_head(head, raw, b"ip", b"r", [(b"b3", b"new")]) is not None


def test_other_heads_that_cannot_go_as_received(fastpath: ModuleType) -> None:
    for raw in (
        b"GET / HTTP/1.0\r\nHost: w\r\n\r\n",  # answered as HTTP/1.1
        b"POST / HTTP/1.1\r\nHost: w\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\n",
    ):
        head = head_of(fastpath, raw)
        assert fastpath.raw_request_head(head, raw, b"ip", b"rid", None) is None
    head = head_of(fastpath, RAW)
    for raw in (b"\r\n" + RAW, RAW[:-2], b""):  # leading empty line, no end
        assert fastpath.raw_request_head(head, raw, b"ip", b"rid", None) is None
    one = b"POST / HTTP/1.1\r\nHost: w\r\nContent-Length: 2\r\n\r\n"
    assert fastpath.raw_request_head(head_of(fastpath, one), one, b"ip", b"r", None) is not None


def test_fields_that_are_not_bytes_are_a_type_error(fastpath: ModuleType) -> None:
    head = head_of(fastpath, RAW)
    with pytest.raises(TypeError):
        fastpath.raw_request_head(head, RAW, b"ip", b"rid", [("traceparent", "x")])


def test_the_head_builder_gives_the_same_head_both_ways() -> None:
    from meshproxy import fastpath as fp

    extra = [(b"traceparent", b"00-1-2-01")]
    head = head_of(fp, RAW)
    assert build_request_head(head, b"/p?q", b"10.0.0.9", None, RAW, b"rid", None, extra) == (
        fp.raw_request_head(head, RAW, b"10.0.0.9", b"rid", extra)
    )


NAMES = st.sampled_from(
    [b"Host", b"Accept", b"Content-Length", b"X-Forwarded-For", b"x-request-id", b"TE",
     b"Connection", b"Upgrade", b"traceparent", b"B3", b"X-B3-TraceId", b"User-Agent", b"te-x"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    fields=st.lists(st.tuples(NAMES, st.sampled_from([b"1", b"a b", b"keep-alive"])), max_size=6),
    extra=st.lists(st.tuples(NAMES, st.just(b"v")), max_size=3),
)
def test_both_implementations_agree(
    fields: list[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]]
) -> None:
    python = importlib.import_module("meshproxy._fastpath_py")
    cython = compiled_fastpath()
    raw = b"GET / HTTP/1.1\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in fields) + b"\r\n"
    try:
        heads = [m.parse_request_head(raw) for m in (python, cython)]
    except python.ParseError:
        return  # refused by the parser (both twins alike: the parser's own tests)
    except cython.ParseError:
        return
    got = [
        m.raw_request_head(h[0], raw, b"ip", b"rid", extra)
        for m, h in zip((python, cython), heads, strict=True)
    ]
    assert got[0] == got[1]
