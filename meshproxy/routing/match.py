"""Compiled match conditions and the lazy view of a request they read.

A ``Match`` model is turned once per snapshot into a ``MatchBlock`` of small
matcher objects over bytes (regexes compiled, names lower-cased, strings
encoded), so a request is never compared against config text.  The
``RequestView`` derives what the conditions need (the path, lower-cased header
names, the query, cookies) on first use only: a table that matches on the path
alone never looks at the headers, and the query is parsed only when a rule
matches on it.  No I/O, no clocks.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from meshproxy.config.routes import Match, StringMatch


class ValueMatcher:
    """A condition on a value that may be missing (``None``)."""

    __slots__ = ()

    def test(self, value: bytes | None) -> bool:
        raise NotImplementedError

    def test_any(self, values: list[bytes]) -> bool:
        """Repeated headers and query keys: the condition holds when one value holds."""
        if not values:
            return self.test(None)
        for value in values:  # noqa: SIM110 - any(generator) is slower on this path
            if self.test(value):
                return True
        return False


class Exact(ValueMatcher):
    __slots__ = ("expected",)

    def __init__(self, expected: bytes) -> None:
        self.expected = expected

    def test(self, value: bytes | None) -> bool:
        return value == self.expected

    def test_any(self, values: list[bytes]) -> bool:
        return self.expected in values


class Prefix(ValueMatcher):
    __slots__ = ("prefix",)

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix

    def test(self, value: bytes | None) -> bool:
        return value is not None and value.startswith(self.prefix)


class Regex(ValueMatcher):
    """The whole value must match, as RE2 ``FullMatch`` does in Envoy."""

    __slots__ = ("pattern",)

    def __init__(self, pattern: re.Pattern[bytes]) -> None:
        self.pattern = pattern

    def test(self, value: bytes | None) -> bool:
        return value is not None and self.pattern.fullmatch(value) is not None


class Present(ValueMatcher):
    __slots__ = ("present",)

    def __init__(self, present: bool) -> None:
        self.present = present

    def test(self, value: bytes | None) -> bool:
        return (value is not None) is self.present

    def test_any(self, values: list[bytes]) -> bool:
        return bool(values) is self.present


def compile_string_match(spec: StringMatch) -> ValueMatcher:
    if spec.exact is not None:
        return Exact(spec.exact.encode())
    if spec.prefix is not None:
        return Prefix(spec.prefix.encode())
    if spec.regex is not None:
        return Regex(re.compile(spec.regex.encode()))
    return Present(bool(spec.present))


def host_without_port(host: bytes) -> bytes:
    """``Example.COM:8080`` -> ``example.com``; ``[::1]:80`` -> ``[::1]``."""
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end > 0 else host
    name, colon, port = host.rpartition(b":")
    if colon and port.isdigit():
        host = name
    return host.lower()


def _query_pairs(query: bytes) -> dict[bytes, list[bytes]]:
    pairs: dict[bytes, list[bytes]] = {}
    for part in query.split(b"&"):
        if not part:
            continue
        key, _, value = part.partition(b"=")
        key = unquote_to_bytes(key.replace(b"+", b" "))
        pairs.setdefault(key, []).append(unquote_to_bytes(value.replace(b"+", b" ")))
    return pairs


class RequestView:
    """What the matchers read from one request, each part derived once."""

    __slots__ = ("_headers", "_lower", "_path", "_query", "headers", "method", "target")

    def __init__(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self._path: bytes | None = None
        self._query: dict[bytes, list[bytes]] | None = None
        self._lower: dict[bytes, list[bytes]] | None = None

    def path(self) -> bytes:
        path = self._path
        if path is None:
            path = self._path = request_path(self.target)
        return path

    def header_values(self, name: bytes) -> list[bytes]:
        """Every value of header ``name`` (lower-case), in order."""
        # One scan per name asked for, not a dict of every header: tables
        # match on a few names while requests carry many headers.
        found = self._lower
        if found is None:
            found = self._lower = {}
        else:
            values = found.get(name)
            if values is not None:
                return values
        size = len(name)
        values = [v for k, v in self.headers if len(k) == size and k.lower() == name]
        found[name] = values
        return values

    def query_values(self, name: bytes) -> list[bytes]:
        query = self._query
        if query is None:
            _, _, raw = self.target.partition(b"?")
            query = self._query = _query_pairs(raw.partition(b"#")[0])
        return query.get(name, [])


def request_path(target: bytes) -> bytes:
    """The path of a request target: origin form or absolute form; ``*`` and
    authority forms (OPTIONS, CONNECT) come back unchanged."""
    if not target.startswith(b"/"):
        scheme_end = target.find(b"://")
        if scheme_end < 0:
            return target
        slash = target.find(b"/", scheme_end + 3)
        if slash < 0:
            return b"/"
        target = target[slash:]
    query = target.find(b"?")
    return target if query < 0 else target[:query]


def cookie_value(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of cookie ``name`` across every Cookie header."""
    for key, value in headers:
        if len(key) == 6 and key.lower() == b"cookie":
            for pair in value.split(b";"):
                cname, eq, cvalue = pair.strip().partition(b"=")
                if eq and cname == name:
                    return cvalue.strip(b'"')
    return None


def first_header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower-case), without building a dict."""
    size = len(name)
    for key, value in headers:
        if len(key) == size and key.lower() == name:
            return value
    return None


def hash_key(
    headers: list[tuple[bytes, bytes]],
    client_address: str,
    header: bytes | None,
    cookie: bytes | None,
    client: bool,
) -> bytes | None:
    """The split or hash key a ``hash_on`` names (``header`` lower-case), or
    None when the request does not carry it.  One rule for every room that
    hashes requests (route splits, consistent-hash balancing)."""
    if header is not None:
        return first_header(headers, header)
    if cookie is not None:
        return cookie_value(headers, cookie)
    if client and client_address:
        return client_address.encode()
    return None


class MatchBlock:
    """One compiled match block: all of its conditions must hold."""

    __slots__ = ("headers", "match_all", "method", "path", "path_prefix", "query")

    def __init__(self, spec: Match) -> None:
        self.method = spec.method.encode() if spec.method is not None else None
        self.path: ValueMatcher | None = None
        # The path part a prefix rewrite replaces: the prefix (or the exact
        # path) this block matched; "/" when the block does not look at paths.
        self.path_prefix = b"/"
        if spec.path is not None:
            self.path = compile_string_match(spec.path)
            if spec.path.prefix is not None:
                self.path_prefix = spec.path.prefix.encode()
            elif spec.path.exact is not None:
                self.path_prefix = spec.path.exact.encode()
        if isinstance(self.path, Prefix) and self.path.prefix == b"/":
            self.path = None  # every origin-form path starts with "/"
        self.headers = tuple(
            (name.lower().encode(), compile_string_match(cond))
            for name, cond in spec.headers.items()
        )
        self.query = tuple(
            (name.encode(), compile_string_match(cond)) for name, cond in spec.query_params.items()
        )
        self.match_all = (
            self.method is None and self.path is None and not self.headers and not self.query
        )

    def matches(self, request: RequestView) -> bool:
        if self.method is not None and request.method != self.method:
            return False
        if self.path is not None and not self.path.test(request.path()):
            return False
        for name, cond in self.headers:
            if not cond.test_any(request.header_values(name)):
                return False
        return all(cond.test_any(request.query_values(name)) for name, cond in self.query)
