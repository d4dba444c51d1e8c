"""Local replies: plain text, short body, Connection: close on request."""

from __future__ import annotations

from meshproxy import fastpath as fp
from meshproxy.http1.replies import local_reply


def test_local_reply_is_a_complete_plain_text_response() -> None:
    data = local_reply(503, "upstream connect timeout", close=False)
    got = fp.parse_response_head(data)
    assert got is not None
    head, end = got
    assert (head.status, head.reason) == (503, b"Service Unavailable")
    assert (b"Content-Type", b"text/plain") in head.headers
    assert head.keep_alive
    assert data[end:] == b"upstream connect timeout\n"
    assert head.content_length == len(data) - end


def test_close_adds_connection_close() -> None:
    got = fp.parse_response_head(local_reply(400, "bad request", close=True))
    assert got is not None and not got[0].keep_alive


def test_replies_are_built_once() -> None:
    assert local_reply(404, "unknown service", False) is local_reply(404, "unknown service", False)


def test_answer_to_head_has_the_length_but_no_body() -> None:
    data = local_reply(404, "unknown service", False, head_only=True)
    got = fp.parse_response_head(data, 0, b"HEAD")
    assert got is not None
    head, end = got
    assert data[end:] == b""
    assert (b"Content-Length", b"16") in head.headers
