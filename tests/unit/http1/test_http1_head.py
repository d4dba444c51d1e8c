"""Head rewriting: hop-by-hop removal, forwarded fields, framing announcements."""

from __future__ import annotations

from meshproxy import fastpath as fp
from meshproxy.http1.head import (
    FIXED_HOP_BY_HOP,
    build_request_head,
    build_response_head,
    has_hop_by_hop,
    idle_deadline,
    new_request_id,
    origin_form,
    status_line,
    strip_port,
)


def request(raw: bytes) -> fp.RequestHead:
    got = fp.parse_request_head(raw)
    assert got is not None
    return got[0]


def response(raw: bytes, method: bytes = b"GET") -> fp.ResponseHead:
    got = fp.parse_response_head(raw, 0, method)
    assert got is not None
    return got[0]


def lines(head: bytes) -> list[bytes]:
    assert head.endswith(b"\r\n\r\n")
    return head[:-4].split(b"\r\n")


def test_request_head_drops_hop_by_hop_fields_and_those_named_by_connection() -> None:
    head = request(
        b"GET /a HTTP/1.1\r\nHost: web\r\nConnection: keep-alive, X-Private\r\n"
        b"X-Private: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: close\r\nTE: trailers\r\n"
        b"Accept: */*\r\n\r\n"
    )
    out = lines(build_request_head(head, b"/a", b"10.1.1.1", None))
    names = [line.split(b":")[0].lower() for line in out[1:]]
    assert out[0] == b"GET /a HTTP/1.1"
    for gone in (b"connection", b"x-private", b"keep-alive", b"proxy-connection", b"te"):
        assert gone not in names
    assert b"Accept: */*" in out
    assert b"Host: web" in out


def test_request_head_appends_client_to_forwarded_for_and_sets_proto() -> None:
    head = request(
        b"GET / HTTP/1.1\r\nHost: web\r\nX-Forwarded-For: 1.1.1.1\r\n"
        b"X-Forwarded-For: 2.2.2.2\r\nX-Forwarded-Proto: https\r\n\r\n"
    )
    out = lines(build_request_head(head, b"/", b"10.0.0.9", None))
    assert b"X-Forwarded-For: 1.1.1.1, 2.2.2.2, 10.0.0.9" in out
    assert b"X-Forwarded-Proto: http" in out
    assert sum(line.lower().startswith(b"x-forwarded-") for line in out) == 2


def test_request_id_is_added_when_absent_and_kept_when_given() -> None:
    fresh = lines(
        build_request_head(request(b"GET / HTTP/1.1\r\nHost: w\r\n\r\n"), b"/", b"ip", None)
    )
    given = lines(
        build_request_head(
            request(b"GET / HTTP/1.1\r\nHost: w\r\nX-Request-Id: abc\r\n\r\n"), b"/", b"ip", None
        )
    )
    ids = [line for line in fresh if line.startswith(b"X-Request-Id: ")]
    assert len(ids) == 1 and len(ids[0]) == len(b"X-Request-Id: ") + 32
    assert [line for line in given if line.lower().startswith(b"x-request-id")] == [
        b"X-Request-Id: abc"
    ]


def test_request_ids_differ() -> None:
    assert len({new_request_id() for _ in range(1000)}) == 1000


def test_http10_request_goes_upstream_as_http11_with_chunked_kept() -> None:
    head = request(b"GET / HTTP/1.0\r\nHost: w\r\n\r\n")
    assert build_request_head(head, b"/", b"ip", None).startswith(b"GET / HTTP/1.1\r\n")
    chunked = request(b"POST / HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in lines(build_request_head(chunked, b"/", b"ip", None))


def test_absolute_form_authority_replaces_host() -> None:
    head = request(b"GET http://svc:81/x HTTP/1.1\r\nHost: elsewhere\r\n\r\n")
    out = lines(build_request_head(head, b"/x", b"ip", b"svc:81"))
    assert out[0] == b"GET /x HTTP/1.1"
    assert b"Host: svc:81" in out and b"Host: elsewhere" not in out


def test_upgrade_request_keeps_its_upgrade() -> None:
    head = request(
        b"GET /ws HTTP/1.1\r\nHost: w\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    out = lines(build_request_head(head, b"/ws", b"ip", None))
    assert b"Connection: upgrade" in out and b"Upgrade: websocket" in out


def test_origin_form_splits_absolute_targets_only() -> None:
    assert origin_form(b"/a?b") == (None, b"/a?b")
    assert origin_form(b"http://svc:8080/p?q=1") == (b"svc:8080", b"/p?q=1")
    assert origin_form(b"http://svc") == (b"svc", b"/")
    assert origin_form(b"http://svc?x") == (b"svc", b"/?x")
    assert origin_form(b"*") == (None, b"*")


def test_strip_port() -> None:
    assert strip_port(b"svc:80") == b"svc"
    assert strip_port(b"svc") == b"svc"
    assert strip_port(b"[::1]:80") == b"::1"


def test_plain_response_head_is_forwarded_untouched() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n"
    head = response(raw)
    assert not has_hop_by_hop(head)
    assert build_response_head(head, raw, False, False, None, False) is raw


def test_response_head_loses_hop_by_hop_and_announces_our_framing() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: x-secret\r\n"
        b"X-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: 1\r\n\r\n"
    )
    head = response(raw)
    assert has_hop_by_hop(head)
    out = lines(build_response_head(head, raw, True, True, b"close", False))  # type: ignore[arg-type]
    assert out[0] == b"HTTP/1.1 200 OK"
    assert sorted(out[1:]) == sorted(
        [b"X-Kept: 1", b"Connection: close", b"Transfer-Encoding: chunked"]
    )


def test_http10_response_is_rewritten_as_http11() -> None:
    raw = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"
    out = build_response_head(response(raw), raw, False, False, b"keep-alive", False)
    assert lines(bytes(out)) == [
        b"HTTP/1.1 200 OK",
        b"Content-Length: 0",
        b"Connection: keep-alive",
    ]


def test_switching_protocols_keeps_upgrade() -> None:
    raw = (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Accept: x\r\n\r\n"
    )
    out = lines(bytes(build_response_head(response(raw), raw, True, False, None, True)))
    assert b"Upgrade: websocket" in out and b"Connection: upgrade" in out
    assert b"Sec-WebSocket-Accept: x" in out


def test_status_lines_are_cached() -> None:
    assert status_line(200, b"OK") is status_line(200, b"OK")
    assert status_line(404, b"Nope") == b"HTTP/1.1 404 Nope\r\n"


def test_idle_deadline_stays_below_the_upstream_keep_alive() -> None:
    assert idle_deadline(50.0, None) == 50.0
    assert idle_deadline(50.0, 5.0) == 4.0
    assert idle_deadline(3.0, 60.0) == 3.0
    assert idle_deadline(50.0, 1.0) == 0.5
    assert idle_deadline(50.0, 0.0) == 0.0


RAW = b"GET /p?q HTTP/1.1\r\nHost: web\r\nAccept: */*\r\n\r\n"


def test_plain_request_head_is_forwarded_as_received_plus_our_fields() -> None:
    out = lines(build_request_head(request(RAW), b"/p?q", b"10.0.0.9", None, RAW))
    assert out[:3] == [b"GET /p?q HTTP/1.1", b"Host: web", b"Accept: */*"]
    assert out[3:5] == [b"X-Forwarded-For: 10.0.0.9", b"X-Forwarded-Proto: http"]
    assert out[5].startswith(b"X-Request-Id: ") and len(out) == 6


def test_raw_and_rebuilt_heads_carry_the_same_fields() -> None:
    for raw in (
        RAW,
        b"POST / HTTP/1.1\r\nHost: w\r\nContent-Length: 2\r\nX-A: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: w\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: w\r\nUpgrade: h2c\r\n\r\n",
    ):
        head = request(raw)
        fast = [x for x in lines(build_request_head(head, head.target, b"ip", None, raw))]
        slow = [x for x in lines(build_request_head(head, head.target, b"ip", None))]
        assert [x for x in fast if not x.startswith(b"X-Request-Id")] == [
            x for x in slow if not x.startswith(b"X-Request-Id")
        ]


def test_equal_duplicate_content_lengths_leave_as_one() -> None:
    raw = b"POST / HTTP/1.1\r\nHost: w\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n"
    out = lines(build_request_head(request(raw), b"/", b"ip", None, raw))
    assert [x for x in out if x.lower().startswith(b"content-length")] == [b"Content-Length: 2"]


def test_cached_hop_by_hop_names_follow_the_parser_rule() -> None:
    names = [
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
        b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
        b"host", b"content-length", b"x-forwarded-for", b"accept", b"cookie",
    ]  # fmt: skip
    assert {n for n in names if fp.is_hop_by_hop(n, ())} == FIXED_HOP_BY_HOP


def test_mirror_host_gets_the_shadow_suffix_before_the_port() -> None:
    from meshproxy.http1.head import shadow_host

    assert shadow_host(b"ratings") == b"ratings-shadow"
    assert shadow_host(b"ratings:8080") == b"ratings-shadow:8080"


def test_given_request_id_is_used_on_both_ways_of_building_a_head() -> None:
    raw = b"GET /a HTTP/1.1\r\nHost: web\r\n\r\n"
    head = request(raw)
    fast = build_request_head(head, b"/a", b"10.0.0.1", None, raw, b"rid-1")
    slow = build_request_head(head, b"/a", b"10.0.0.1", None, None, b"rid-1")
    assert b"X-Request-Id: rid-1" in lines(fast)
    assert b"X-Request-Id: rid-1" in lines(slow)


def test_header_list_and_authority_override_the_clients() -> None:
    raw = b"GET /a HTTP/1.1\r\nHost: web\r\nX-Old: 1\r\n\r\n"
    head = request(raw)
    out = build_request_head(
        head, b"/v2/a", b"10.0.0.1", b"internal", raw, b"r", [(b"Host", b"web"), (b"X-New", b"2")]
    )
    got = lines(out)
    assert got[0] == b"GET /v2/a HTTP/1.1"
    assert b"Host: internal" in got and b"X-New: 2" in got
    assert not any(line.startswith(b"X-Old") for line in got)


def test_response_header_list_forces_a_rebuilt_head() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n"
    head = response(raw)
    out = build_response_head(head, raw, False, False, None, False, [(b"X-B", b"2")])
    assert lines(bytes(out)) == [b"HTTP/1.1 200 OK", b"X-B: 2"]


def test_extra_fields_are_appended_to_the_raw_head_when_the_client_sent_none() -> None:
    raw = b"GET /p HTTP/1.1\r\nHost: web\r\nAccept: */*\r\n\r\n"
    extra = [(b"traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-00")]
    out = lines(build_request_head(request(raw), b"/p", b"ip", None, raw, b"rid", None, extra))
    assert out[:3] == [b"GET /p HTTP/1.1", b"Host: web", b"Accept: */*"]
    assert out[-1] == b"traceparent: " + extra[0][1]
    assert b"X-Request-Id: rid" in out


def test_extra_fields_replace_the_clients_of_the_same_name_in_any_case() -> None:
    raw = b"GET /p HTTP/1.1\r\nHost: web\r\nTraceParent: 00-old\r\nB3: old\r\nAccept: */*\r\n\r\n"
    extra = [(b"traceparent", b"new-tp"), (b"b3", b"new-b3")]
    head = request(raw)
    for given in (raw, None):  # the head as received cannot be reused: both ways agree
        out = lines(build_request_head(head, b"/p", b"ip", None, given, b"rid", None, extra))
        assert b"traceparent: new-tp" in out and b"b3: new-b3" in out
        assert not any(b"old" in line for line in out)
        assert b"Accept: */*" in out and b"Host: web" in out
