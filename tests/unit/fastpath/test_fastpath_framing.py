"""Body framing and connection semantics of request and response heads."""

from __future__ import annotations

from types import ModuleType

import pytest

REQ = b"POST /u HTTP/1.1\r\nHost: a\r\n"


def req(fp: ModuleType, fields: bytes, start: bytes = REQ) -> object:
    got = fp.parse_request_head(start + fields + b"\r\n")
    assert got is not None
    return got[0]


def req_status(fp: ModuleType, fields: bytes, start: bytes = REQ) -> int:
    with pytest.raises(fp.ParseError) as info:
        fp.parse_request_head(start + fields + b"\r\n")
    return int(info.value.status)


def resp(fp: ModuleType, text: bytes, method: bytes = b"GET") -> object:
    got = fp.parse_response_head(text + b"\r\n", request_method=method)
    assert got is not None
    return got[0]


def resp_status(fp: ModuleType, text: bytes) -> int:
    with pytest.raises(fp.ParseError) as info:
        fp.parse_response_head(text + b"\r\n")
    return int(info.value.status)


def test_request_without_length_or_coding_has_no_body(fastpath: ModuleType) -> None:
    assert req(fastpath, b"").body == fastpath.BODY_NONE


def test_content_length_frames_the_body(fastpath: ModuleType) -> None:
    head = req(fastpath, b"Content-Length: 0042\r\n")
    assert (head.body, head.content_length) == (fastpath.BODY_LENGTH, 42)


def test_identical_content_lengths_are_collapsed(fastpath: ModuleType) -> None:
    head = req(fastpath, b"Content-Length: 5\r\ncontent-length: 005\r\n")
    assert head.content_length == 5


def test_differing_content_lengths_are_refused(fastpath: ModuleType) -> None:
    assert req_status(fastpath, b"Content-Length: 5\r\nContent-Length: 6\r\n") == 400


@pytest.mark.parametrize(
    "value", [b"", b"+5", b"-5", b"5 5", b"5,5", b"0x5", b"1e3", b"9223372036854775808", b"9" * 30]
)
def test_invalid_content_length_is_refused(fastpath: ModuleType, value: bytes) -> None:
    assert req_status(fastpath, b"Content-Length: " + value + b"\r\n") == 400


def test_largest_content_length_is_accepted(fastpath: ModuleType) -> None:
    assert req(fastpath, b"Content-Length: 9223372036854775807\r\n").content_length == 2**63 - 1


def test_content_length_with_transfer_encoding_is_refused(fastpath: ModuleType) -> None:
    te_cl = b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n"
    assert req_status(fastpath, te_cl) == 400
    assert req_status(fastpath, b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n") == 400
    assert resp_status(fastpath, b"HTTP/1.1 200 OK\r\n" + te_cl) == 502


def test_chunked_request(fastpath: ModuleType) -> None:
    head = req(fastpath, b"Transfer-Encoding: gzip, Chunked\r\n")
    assert (head.body, head.content_length) == (fastpath.BODY_CHUNKED, -1)


def test_final_coding_other_than_chunked_is_501(fastpath: ModuleType) -> None:
    assert req_status(fastpath, b"Transfer-Encoding: chunked, gzip\r\n") == 501
    assert req_status(fastpath, b"Transfer-Encoding: identity\r\n") == 501


def test_chunked_twice_is_refused(fastpath: ModuleType) -> None:
    assert req_status(fastpath, b"Transfer-Encoding: chunked, chunked\r\n") == 400
    both = b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"
    assert req_status(fastpath, both) == 400


@pytest.mark.parametrize("value", [b"", b" , ", b"chunked;x=1", b"ch@nked", b";q=1"])
def test_malformed_transfer_encoding_is_refused(fastpath: ModuleType, value: bytes) -> None:
    assert req_status(fastpath, b"Transfer-Encoding: " + value + b"\r\n") == 400


def test_transfer_encoding_in_http10_request_is_refused(fastpath: ModuleType) -> None:
    start = b"POST / HTTP/1.0\r\n"
    assert req_status(fastpath, b"Transfer-Encoding: chunked\r\n", start) == 400


def test_connect_request_has_no_body(fastpath: ModuleType) -> None:
    head = req(fastpath, b"Content-Length: 10\r\n", b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n")
    assert (head.body, head.content_length) == (fastpath.BODY_NONE, -1)


@pytest.mark.parametrize(
    ("version", "fields", "keep_alive"),
    [
        (b"1.1", b"", True),
        (b"1.1", b"Connection: Close\r\n", False),
        (b"1.1", b"Connection: keep-alive, close\r\n", False),
        (b"1.0", b"", False),
        (b"1.0", b"Connection: Keep-Alive\r\n", True),
        (b"1.0", b"Connection: keep-alive\r\nConnection: close\r\n", False),
    ],
)
def test_keep_alive_follows_version_and_connection(
    fastpath: ModuleType, version: bytes, fields: bytes, keep_alive: bool
) -> None:
    head = req(fastpath, fields, b"GET / HTTP/" + version + b"\r\nHost: a\r\n")
    assert head.keep_alive is keep_alive


def test_connection_tokens_are_lower_cased(fastpath: ModuleType) -> None:
    head = req(fastpath, b"Connection: Upgrade, ,X-Foo\r\nConnection: TE\r\n")
    assert head.connection == (b"upgrade", b"x-foo", b"te")


def test_invalid_connection_token_is_refused(fastpath: ModuleType) -> None:
    assert req_status(fastpath, b"Connection: a b\r\n") == 400


def test_upgrade_needs_connection_upgrade_and_upgrade_field(fastpath: ModuleType) -> None:
    assert req(fastpath, b"Upgrade: websocket\r\n").upgrade is None
    assert req(fastpath, b"Connection: upgrade\r\n").upgrade is None
    head = req(fastpath, b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
    assert head.upgrade == b"websocket"


def test_expect_continue_is_case_insensitive(fastpath: ModuleType) -> None:
    assert req(fastpath, b"Expect: 100-Continue\r\n").expect_continue
    assert not req(fastpath, b"Expect: 200-ok\r\n").expect_continue


@pytest.mark.parametrize(
    ("text", "method", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n", b"GET", 1),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n", b"GET", 2),
        (b"HTTP/1.1 200 OK\r\n", b"GET", 3),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n", b"GET", 3),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n", b"HEAD", 0),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n", b"GET", 0),
        (b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n", b"GET", 0),
        (b"HTTP/1.1 100 Continue\r\n", b"POST", 0),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ws\r\n", b"GET", 4),
        (b"HTTP/1.1 200 Connection established\r\n", b"CONNECT", 4),
        (b"HTTP/1.1 407 Auth\r\nContent-Length: 0\r\n", b"CONNECT", 1),
    ],
)
def test_response_framing_follows_rfc9112_6_3(
    fastpath: ModuleType, text: bytes, method: bytes, body: int
) -> None:
    assert resp(fastpath, text, method).body == body


def test_body_until_close_ends_keep_alive(fastpath: ModuleType) -> None:
    assert not resp(fastpath, b"HTTP/1.1 200 OK\r\n").keep_alive
    assert resp(fastpath, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n").keep_alive


def test_response_status_line(fastpath: ModuleType) -> None:
    head = resp(fastpath, b"HTTP/1.0 404 Not \xffFound\r\nContent-Length: 0\r\n")
    assert (head.version, head.status, head.reason) == (10, 404, b"Not \xffFound")
    assert resp(fastpath, b"HTTP/1.1 301\r\n").reason == b""


@pytest.mark.parametrize(
    "line",
    [
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1  200 OK",
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1 099 x",
        b"HTTP/2 200 OK",
        b"HTTP/1.1 200 O\x01K",
        b"ICE/1.0 200 OK",
        b"HTTP/1.1\t200 OK",
    ],
)
def test_malformed_status_line_is_502(fastpath: ModuleType, line: bytes) -> None:
    assert resp_status(fastpath, line + b"\r\n") == 502


def test_response_header_errors_are_502(fastpath: ModuleType) -> None:
    assert resp_status(fastpath, b"HTTP/1.1 200 OK\r\nX : y\r\n") == 502
    assert resp_status(fastpath, b"HTTP/1.1 200 OK\r\nX: y\r\n z\r\n") == 502
    with pytest.raises(fastpath.ParseError) as info:
        fastpath.parse_response_head(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n")
    assert info.value.status == 502


def test_parse_error_carries_status_and_reason(fastpath: ModuleType) -> None:
    err = fastpath.ParseError(400, "bad")
    assert (err.status, err.reason, str(err)) == (400, "bad", "400 bad")
