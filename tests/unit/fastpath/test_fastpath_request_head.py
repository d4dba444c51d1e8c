"""Strict request-head rules, each pinned against both implementations."""

from __future__ import annotations

from types import ModuleType

import pytest


def parse(fp: ModuleType, text: bytes, **kw: int) -> object:
    got = fp.parse_request_head(text, **kw)
    assert got is not None, "head should be complete"
    head, end = got
    assert end == len(text)
    return head


def refused(fp: ModuleType, text: bytes, **kw: int) -> int:
    with pytest.raises(fp.ParseError) as info:
        fp.parse_request_head(text, **kw)
    return int(info.value.status)


GET = b"GET /a?b=c HTTP/1.1\r\nHost: svc\r\n"


def test_simple_get_is_parsed(fastpath: ModuleType) -> None:
    head = parse(fastpath, GET + b"User-Agent:  x y \t\r\n\r\n")
    assert (head.method, head.target, head.version) == (b"GET", b"/a?b=c", 11)
    assert head.headers == [(b"Host", b"svc"), (b"User-Agent", b"x y")]
    assert (head.body, head.content_length) == (fastpath.BODY_NONE, -1)
    assert head.keep_alive and head.host == b"svc"
    assert head.upgrade is None and not head.expect_continue


def test_incomplete_head_returns_none(fastpath: ModuleType) -> None:
    for cut in range(len(GET) + 1):
        assert fastpath.parse_request_head(GET[:cut]) is None


def test_start_offset_and_pipelined_heads(fastpath: ModuleType) -> None:
    two = GET + b"\r\n" + b"POST /p HTTP/1.1\r\nHost: s\r\nContent-Length: 2\r\n\r\nok"
    first, end = fastpath.parse_request_head(two)
    second, end2 = fastpath.parse_request_head(two, end)
    assert (first.method, second.method, second.content_length) == (b"GET", b"POST", 2)
    assert two[end2:] == b"ok"


def test_empty_lines_before_the_request_line_are_skipped(fastpath: ModuleType) -> None:
    head, end = fastpath.parse_request_head(b"\r\n\r\n" + GET + b"\r\n")
    assert head.target == b"/a?b=c" and end == len(GET) + 6


@pytest.mark.parametrize(
    "line",
    [
        b"GET  / HTTP/1.1",
        b"GET /  HTTP/1.1",
        b"GET / HTTP/1.1 ",
        b" GET / HTTP/1.1",
        b"GET\t/ HTTP/1.1",
        b"G(T / HTTP/1.1",
        b"GET /a\x01 HTTP/1.1",
        b"GET /\xce\xb4 HTTP/1.1",
        b"GET / http/1.1",
        b"GET / HTTP/1.10",
        b"GET / HTTP/1",
        b"GET /",
    ],
)
def test_malformed_request_line_is_refused(fastpath: ModuleType, line: bytes) -> None:
    assert refused(fastpath, line + b"\r\nHost: a\r\n\r\n") == 400


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.2"])
def test_other_http_versions_get_505(fastpath: ModuleType, version: bytes) -> None:
    assert refused(fastpath, b"GET / " + version + b"\r\nHost: a\r\n\r\n") == 505


def test_http10_without_host_is_accepted(fastpath: ModuleType) -> None:
    head = parse(fastpath, b"GET / HTTP/1.0\r\n\r\n")
    assert head.version == 10 and head.host is None and not head.keep_alive


def test_http11_without_host_is_refused(fastpath: ModuleType) -> None:
    assert refused(fastpath, b"GET / HTTP/1.1\r\nX: y\r\n\r\n") == 400


def test_more_than_one_host_is_refused(fastpath: ModuleType) -> None:
    assert refused(fastpath, GET + b"host: b\r\n\r\n") == 400


@pytest.mark.parametrize("host", [b"a b", b"user@h", b"h/p", b"h\x7f"])
def test_invalid_host_value_is_refused(fastpath: ModuleType, host: bytes) -> None:
    assert refused(fastpath, b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n") == 400


@pytest.mark.parametrize(
    ("method", "target"),
    [
        (b"GET", b"/"),
        (b"GET", b"http://svc:8080/x?y#z"),
        (b"GET", b"https://[::1]:443"),
        (b"OPTIONS", b"*"),
        (b"CONNECT", b"svc.example:443"),
        (b"CONNECT", b"[::1]:443"),
        (b"M-SEARCH", b"/x"),
    ],
)
def test_valid_target_forms_are_accepted(
    fastpath: ModuleType, method: bytes, target: bytes
) -> None:
    head = parse(fastpath, method + b" " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (head.method, head.target) == (method, target)


@pytest.mark.parametrize(
    ("method", "target"),
    [
        (b"GET", b"*"),
        (b"GET", b"svc:443"),
        (b"GET", b"http://user:pw@svc/"),
        (b"GET", b"1http://svc/"),
        (b"GET", b"mailto:x"),
        (b"CONNECT", b"/path"),
        (b"CONNECT", b"svc"),
        (b"CONNECT", b"svc:port"),
        (b"CONNECT", b"u@svc:443"),
    ],
)
def test_target_form_must_fit_the_method(
    fastpath: ModuleType, method: bytes, target: bytes
) -> None:
    assert refused(fastpath, method + b" " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n") == 400


def test_obs_fold_is_refused(fastpath: ModuleType) -> None:
    assert refused(fastpath, GET + b"X: a\r\n b\r\n\r\n") == 400


def test_whitespace_after_start_line_is_refused(fastpath: ModuleType) -> None:
    assert refused(fastpath, b"GET / HTTP/1.1\r\n Host: a\r\n\r\n") == 400


@pytest.mark.parametrize("line", [b"X : y", b": y", b"X", b"X\x00: y", b"X(: y", b"\tX: y"])
def test_invalid_header_name_is_refused(fastpath: ModuleType, line: bytes) -> None:
    assert refused(fastpath, GET + line + b"\r\n\r\n") == 400


@pytest.mark.parametrize("value", [b"a\x00b", b"a\x0cb", b"a\x7fb", b"a\rb", b"a\nb"])
def test_control_bytes_in_header_value_are_refused(fastpath: ModuleType, value: bytes) -> None:
    assert refused(fastpath, GET + b"X: " + value + b"\r\n\r\n") == 400


def test_tab_and_obs_text_in_header_value_are_kept(fastpath: ModuleType) -> None:
    head = parse(fastpath, GET + b"X: \ta\tb\xff \r\n\r\n")
    assert head.headers[-1] == (b"X", b"a\tb\xff")


@pytest.mark.parametrize(
    "text",
    [
        b"GET / HTTP/1.1\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
        b"GET / HTTP/1.1\rHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\r\n",
    ],
)
def test_bare_cr_or_lf_is_refused(fastpath: ModuleType, text: bytes) -> None:
    with pytest.raises(fastpath.ParseError) as info:
        fastpath.parse_request_head(text)
    assert info.value.status == 400


def test_431_past_max_head(fastpath: ModuleType) -> None:
    big = GET + b"X: " + b"a" * 200 + b"\r\n\r\n"
    assert parse(fastpath, big, max_head=len(big)).method == b"GET"
    assert refused(fastpath, big, max_head=len(big) - 1) == 431
    assert refused(fastpath, big[:-4], max_head=100) == 431  # incomplete, already too big


def test_431_past_max_headers(fastpath: ModuleType) -> None:
    text = GET + b"X: y\r\n" * 9 + b"\r\n"
    assert len(parse(fastpath, text, max_headers=10).headers) == 10
    assert refused(fastpath, text, max_headers=9) == 431


def test_default_limits(fastpath: ModuleType) -> None:
    assert (fastpath.DEFAULT_MAX_HEAD, fastpath.DEFAULT_MAX_HEADERS) == (61440, 100)
    assert refused(fastpath, GET + b"X: y\r\n" * 100 + b"\r\n") == 431
    assert refused(fastpath, GET + b"X: " + b"y" * 61440) == 431


def test_errors_are_reported_before_the_head_is_complete(fastpath: ModuleType) -> None:
    assert refused(fastpath, b"GET / HTTP/5.6") == 505
    assert refused(fastpath, b"GE@") == 400
    assert refused(fastpath, GET + b"Content-Length: 1\r\nContent-Length: 2\r\n") == 400
    assert refused(fastpath, GET + b"X\x01") == 400
    assert refused(fastpath, GET + b" folded") == 400
