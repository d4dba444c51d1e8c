"""Header helpers the proxy uses around the parser."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from tests.twins import compiled_fastpath

HEADERS = [
    (b"Host", b"svc"),
    (b"Connection", b"keep-alive, X-Trace"),
    (b"Keep-Alive", b"max=100, timeout=5"),
    (b"X-Trace", b"1"),
    (b"TE", b"trailers"),
    (b"Accept", b"*/*"),
    (b"accept", b"text/html"),
]


def test_header_value_finds_the_first_field_by_lower_case_name(fastpath: ModuleType) -> None:
    assert fastpath.header_value(HEADERS, b"accept") == b"*/*"
    assert fastpath.header_value(HEADERS, b"host") == b"svc"
    assert fastpath.header_value(HEADERS, b"cookie") is None


@pytest.mark.parametrize(
    "name",
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"x-trace",
    ],
)
def test_hop_by_hop_names(fastpath: ModuleType, name: bytes) -> None:
    assert fastpath.is_hop_by_hop(name, (b"keep-alive", b"x-trace"))


def test_end_to_end_names_are_not_hop_by_hop(fastpath: ModuleType) -> None:
    assert not fastpath.is_hop_by_hop(b"host", (b"close",))
    assert not fastpath.is_hop_by_hop(b"x-trace", ())


def test_end_to_end_headers_drop_hop_by_hop_fields(fastpath: ModuleType) -> None:
    kept = fastpath.end_to_end_headers(HEADERS, (b"keep-alive", b"x-trace"))
    assert kept == [(b"Host", b"svc"), (b"Accept", b"*/*"), (b"accept", b"text/html")]


def test_end_to_end_headers_of_a_parsed_request(fastpath: ModuleType) -> None:
    text = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Hop\r\nX-Hop: 1\r\nX-End: 2\r\n\r\n"
    head, _ = fastpath.parse_request_head(text)
    assert fastpath.end_to_end_headers(head.headers, head.connection) == [
        (b"Host", b"a"),
        (b"X-End", b"2"),
    ]


@pytest.mark.parametrize(
    ("value", "timeout"),
    [
        (b"timeout=5", 5.0),
        (b"max=100, timeout=15", 15.0),
        (b"Timeout = 7", 7.0),
        (b'timeout="3"', 3.0),
        (b"timeout=x", None),
        (b"timeout=", None),
        (b"timeout=-1", None),
        (b"max=5", None),
    ],
)
def test_keep_alive_timeout(fastpath: ModuleType, value: bytes, timeout: float | None) -> None:
    assert fastpath.keep_alive_timeout([(b"Keep-Alive", value)]) == timeout


def test_keep_alive_timeout_absent(fastpath: ModuleType) -> None:
    assert fastpath.keep_alive_timeout([(b"Host", b"a")]) is None
    assert fastpath.keep_alive_timeout(HEADERS) == 5.0


def test_token_and_field_value_rules(fastpath: ModuleType) -> None:
    assert fastpath.is_token(b"X-Request-Id") and fastpath.is_token(b"!#$%&'*+-.^_`|~")
    assert not fastpath.is_token(b"") and not fastpath.is_token(b"a b")
    assert not fastpath.is_token(b"a:b")
    assert fastpath.is_field_value(b"") and fastpath.is_field_value(b"a\tb \xff")
    assert not fastpath.is_field_value(b" a") and not fastpath.is_field_value(b"a\t")
    assert not fastpath.is_field_value(b"a\r\nb") and not fastpath.is_field_value(b"\x00")


def test_both_implementations_export_the_same_names() -> None:
    py = importlib.import_module("meshproxy._fastpath_py")
    cy = compiled_fastpath()
    assert sorted(py.__all__) == sorted(cy.__all__)
    for name in py.__all__:
        assert hasattr(cy, name), name
