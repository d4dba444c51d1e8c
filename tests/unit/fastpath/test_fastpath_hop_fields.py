"""``hop_by_hop_fields``: the fields a proxy must not forward, found in one pass."""

from __future__ import annotations

from types import ModuleType

HEADERS = [
    (b"Host", b"svc"),
    (b"Connection", b"keep-alive, X-Trace"),
    (b"Keep-Alive", b"max=100, timeout=5"),
    (b"X-Trace", b"1"),
    (b"TE", b"trailers"),
    (b"Accept", b"*/*"),
    (b"Proxy-Authorization", b"Basic x"),
]


def test_hop_by_hop_fields_are_listed_lower_cased_in_order(fastpath: ModuleType) -> None:
    assert fastpath.hop_by_hop_fields(HEADERS, (b"keep-alive", b"x-trace")) == [
        (b"connection", b"keep-alive, X-Trace"),
        (b"keep-alive", b"max=100, timeout=5"),
        (b"x-trace", b"1"),
        (b"te", b"trailers"),
        (b"proxy-authorization", b"Basic x"),
    ]


def test_a_name_is_hop_by_hop_only_when_connection_lists_it(fastpath: ModuleType) -> None:
    headers = [(b"X-Trace", b"1"), (b"Date", b"today"), (b"Server", b"nginx")]
    assert fastpath.hop_by_hop_fields(headers, ()) == []
    assert fastpath.hop_by_hop_fields(headers, (b"server",)) == [(b"server", b"nginx")]


def test_a_parsed_response_names_its_connection_options(fastpath: ModuleType) -> None:
    text = (
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 2\r\n"
        b"Connection: keep-alive\r\nX-Subset: v1\r\n\r\nok"
    )
    head, _ = fastpath.parse_response_head(text)
    assert fastpath.hop_by_hop_fields(head.headers, head.connection) == [
        (b"connection", b"keep-alive")
    ]
