"""The request view's parsing helpers: paths, hosts, cookies, query values."""

from __future__ import annotations

import pytest

from meshproxy.routing.match import (
    RequestView,
    cookie_value,
    hash_key,
    host_without_port,
    request_path,
)


@pytest.mark.parametrize(
    ("target", "path"),
    [
        (b"/a/b?c=d", b"/a/b"),
        (b"/a/b", b"/a/b"),
        (b"http://ratings:9080/a?x", b"/a"),
        (b"http://ratings?x", b"/"),
        (b"*", b"*"),
        (b"ratings:443", b"ratings:443"),
    ],
)
def test_request_path_of_every_target_form(target: bytes, path: bytes) -> None:
    assert request_path(target) == path


@pytest.mark.parametrize(
    ("host", "name"),
    [
        (b"Ratings.Example.com:8080", b"ratings.example.com"),
        (b"ratings", b"ratings"),
        (b"[::1]:80", b"[::1]"),
        (b"[::1]", b"[::1]"),
        (b"ratings:", b"ratings:"),
    ],
)
def test_host_without_port_lower_cases_and_drops_the_port(host: bytes, name: bytes) -> None:
    assert host_without_port(host) == name


def test_cookie_value_reads_the_named_cookie_across_headers() -> None:
    headers = [(b"Cookie", b"a=1; b=2"), (b"cookie", b'session="s1"; c=3')]
    assert cookie_value(headers, b"b") == b"2"
    assert cookie_value(headers, b"session") == b"s1"
    assert cookie_value(headers, b"sess") is None


def test_query_values_keep_repeats_and_decode_escapes() -> None:
    view = RequestView(b"GET", b"/s?tag=a&tag=b%2Bc&empty=&flag", [])
    assert view.query_values(b"tag") == [b"a", b"b+c"]
    assert view.query_values(b"empty") == [b""]
    assert view.query_values(b"flag") == [b""]
    assert view.query_values(b"none") == []


def test_header_values_ignore_case_of_names_and_keep_order() -> None:
    view = RequestView(b"GET", b"/", [(b"X-A", b"1"), (b"x-b", b"2"), (b"x-a", b"3")])
    assert view.header_values(b"x-a") == [b"1", b"3"]
    assert view.header_values(b"x-a") is view.header_values(b"x-a")
    assert view.header_values(b"x-c") == []


def test_hash_key_comes_from_the_named_source_only() -> None:
    headers = [(b"X-User", b"ann"), (b"Cookie", b"sid=42")]
    assert hash_key(headers, "10.0.0.1", b"x-user", None, False) == b"ann"
    assert hash_key(headers, "10.0.0.1", None, b"sid", False) == b"42"
    assert hash_key(headers, "10.0.0.1", None, None, True) == b"10.0.0.1"
    assert hash_key(headers, "", None, None, True) is None
    assert hash_key(headers, "10.0.0.1", b"x-team", None, False) is None
    assert hash_key(headers, "10.0.0.1", None, None, False) is None
