"""Authorization: access policies compiled per service, decided in Istio's order.

Any matching DENY policy denies; with no ALLOW policy the request is allowed;
a matching ALLOW allows; otherwise it is denied (``403`` with a short
reason).  A policy with no rules matches nothing (so an ALLOW policy without
rules denies everything, as Istio's "allow-nothing"); a rule with no fields
matches everything.

The caller's principal is the peer identity (``ctx.peer``, from mTLS), else
the value of the policy's ``principal_header``, else the client address.  Its
service is the last path segment of a SPIFFE-style principal
(``spiffe://td/ns/default/sa/reviews`` -> ``reviews``), else the principal.

Paths are matched after normalisation (dot segments removed, ``//`` merged,
query dropped) so ``/public/../admin`` cannot slip past a rule on
``/admin/*``; the data path should forward the same normalised path.

It must not do I/O; everything per snapshot is compiled up front.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from typing import Any

from meshproxy.config.access import Access, AccessCondition, AccessRule
from meshproxy.policy.chain import RequestContext
from meshproxy.policy.counters import Counters
from meshproxy.policy.reply import LocalReply

DENIED_BY_POLICY = LocalReply(403, "access denied: deny policy")
NOT_ALLOWED = LocalReply(403, "access denied: no allow policy matched")

PathMatch = Callable[[bytes], bool]
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# ``b"x" in data`` first tries the needle as an integer and raises (and drops)
# a TypeError: some 2k instructions, ten times a search.  Tests on the hot
# path use an int for one byte (``0x25 in path``) and ``partition`` for more.


def plain_path(path: bytes) -> bool:
    """True when ``path`` has nothing to normalise: no ``%``, ``/.`` or ``//``."""
    return 0x25 not in path and _plain_segments(path)


def _plain_segments(path: bytes) -> bool:
    """No dot segment and no empty one: no ``/.`` and no ``//``."""
    return (0x2E not in path or not path.partition(b"/.")[1]) and not path.partition(b"//")[1]


def normalize_path(path: bytes) -> bytes:
    """RFC 3986 dot-segment removal plus merged slashes, on the path without query."""
    path = path.partition(b"?")[0]
    if 0x25 in path:
        path = path.replace(b"%2e", b".").replace(b"%2E", b".")
    if _plain_segments(path):
        return path or b"/"
    out: list[bytes] = []
    for segment in path.split(b"/"):
        if segment in (b"", b"."):
            continue
        if segment == b"..":
            if out:
                out.pop()
            continue
        out.append(segment)
    trailing = path.endswith((b"/", b"/.", b"/.."))
    return b"/" + b"/".join(out) + (b"/" if trailing and out else b"")


def _pattern(raw: bytes) -> tuple[str, bytes | re.Pattern[bytes]]:
    """What a path pattern is: ``exact``, ``prefix``, ``suffix`` (with the bytes
    to compare) or ``glob`` (with its regex: ``*`` one segment, ``**`` any)."""
    stars = raw.count(b"*")
    if stars == 0 and b"?" not in raw:
        return "exact", raw
    if stars == 1 and raw.endswith(b"*") and b"?" not in raw:
        return "prefix", raw[:-1]
    if stars == 1 and raw.startswith(b"*") and b"?" not in raw:
        return "suffix", raw[1:]
    regex = b""
    i = 0
    while i < len(raw):
        if raw[i : i + 2] == b"**":
            regex += b".*"
            i += 2
            continue
        ch = raw[i : i + 1]
        regex += b"[^/]*" if ch == b"*" else b"[^/]" if ch == b"?" else re.escape(ch)
        i += 1
    return "glob", re.compile(regex + b"\\Z", re.S)


def path_matcher(pattern: str) -> PathMatch:
    """``/exact``, ``/prefix/*``, ``*suffix``, or a glob (``*`` one segment, ``**`` any)."""
    kind, arg = _pattern(pattern.encode())
    if isinstance(arg, re.Pattern):
        compiled = arg
        return lambda p: compiled.match(p) is not None
    if kind == "exact":
        return arg.__eq__
    if kind == "prefix":
        return lambda p: p.startswith(arg)
    return lambda p: p.endswith(arg)


class PathSet:
    """Several path patterns matched as one: a set for the exact ones, one
    ``startswith``/``endswith`` over a tuple for prefixes and suffixes."""

    __slots__ = ("exact", "globs", "prefixes", "suffixes")

    def __init__(self, patterns: Sequence[str]) -> None:
        exact: set[bytes] = set()
        prefixes: list[bytes] = []
        suffixes: list[bytes] = []
        globs: list[re.Pattern[bytes]] = []
        for pattern in patterns:
            kind, arg = _pattern(pattern.encode())
            if isinstance(arg, re.Pattern):
                globs.append(arg)
            elif kind == "exact":
                exact.add(arg)
            else:
                (prefixes if kind == "prefix" else suffixes).append(arg)
        self.exact = frozenset(exact)
        self.prefixes = tuple(prefixes)
        self.suffixes = tuple(suffixes)
        self.globs = tuple(globs)

    def __bool__(self) -> bool:
        return bool(self.exact or self.prefixes or self.suffixes or self.globs)

    def matches(self, path: bytes) -> bool:
        return (
            path in self.exact
            or (bool(self.prefixes) and path.startswith(self.prefixes))
            or (bool(self.suffixes) and path.endswith(self.suffixes))
            or any(g.match(path) is not None for g in self.globs)
        )


def _value_matches(patterns: Sequence[str], value: str) -> bool:
    for pattern in patterns:
        if pattern == "*" or pattern == value:
            return True
        if pattern.endswith("*") and value.startswith(pattern[:-1]):
            return True
    return False


def claim_value(claims: dict[str, Any] | None, dotted: str) -> list[str] | None:
    """A claim by dotted path (``realm.roles``) as strings; lists give every item."""
    node: Any = claims
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if isinstance(node, list):
        return [str(item) for item in node]
    return [str(node).lower() if isinstance(node, bool) else str(node)]


class _Condition:
    __slots__ = ("claim", "header", "not_values", "values")

    def __init__(self, cond: AccessCondition) -> None:
        self.header = cond.header.lower().encode("latin-1") if cond.header else None
        self.claim = cond.claim
        self.values = tuple(cond.values)
        self.not_values = tuple(cond.not_values)

    def matches(self, ctx: RequestContext) -> bool:
        if self.header is not None:
            raw = ctx.header(self.header)
            found = None if raw is None else [raw.decode("latin-1")]
        else:
            assert self.claim is not None
            found = claim_value(ctx.claims, self.claim)
        if not found:
            return not self.values
        if self.values and not any(_value_matches(self.values, v) for v in found):
            return False
        return not (self.not_values and any(_value_matches(self.not_values, v) for v in found))


class _Rule:
    __slots__ = (
        "addresses",
        "conditions",
        "methods",
        "operation_only",
        "path_patterns",
        "paths",
        "principals",
        "services",
    )

    def __init__(self, rule: AccessRule) -> None:
        src = rule.from_
        self.principals = tuple(src.principals) if src and src.principals else None
        self.services = frozenset(src.services) if src and src.services else None
        self.addresses: tuple[_Network, ...] | None = (
            tuple(ipaddress.ip_network(a, strict=False) for a in src.addresses)
            if src and src.addresses
            else None
        )
        to = rule.to
        self.methods = (
            frozenset(m.upper().encode() for m in to.methods) if to and to.methods else None
        )
        self.path_patterns = tuple(to.paths) if to and to.paths else ()
        self.paths = tuple(path_matcher(p) for p in to.paths) if to and to.paths else None
        self.conditions = tuple(_Condition(c) for c in rule.when)
        # Decided by the method and the path alone: such rules compile to a table.
        self.operation_only = (
            self.principals is None
            and self.services is None
            and self.addresses is None
            and not self.conditions
        )

    def matches(self, ctx: RequestContext, principal: str, path: bytes) -> bool:
        if self.methods is not None and ctx.method not in self.methods:
            return False
        if self.paths is not None and not any(m(path) for m in self.paths):
            return False
        if self.principals is not None and not _value_matches(self.principals, principal):
            return False
        if self.services is not None and service_of(principal) not in self.services:
            return False
        if self.addresses is not None and not _in_networks(ctx.client_ip, self.addresses):
            return False
        return not self.conditions or all(c.matches(ctx) for c in self.conditions)


def service_of(principal: str) -> str:
    if principal.startswith("spiffe://"):
        return principal.rstrip("/").rpartition("/")[2]
    return principal


def _in_networks(ip: str, networks: tuple[_Network, ...]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in networks)


class _PathVerdict:
    """The decision for one method when paths decide it (Istio's order)."""

    __slots__ = ("allow", "allow_all", "deny", "has_allow")

    def __init__(self, deny: list[_Rule], allow: list[_Rule], has_allow: bool) -> None:
        self.deny = PathSet([p for r in deny for p in r.path_patterns])
        self.allow_all = any(r.paths is None for r in allow)
        self.allow = PathSet([p for r in allow for p in r.path_patterns])
        self.has_allow = has_allow

    def decide(self, path: bytes) -> LocalReply | None:
        if self.deny and self.deny.matches(path):
            return DENIED_BY_POLICY
        if not self.has_allow or self.allow_all or self.allow.matches(path):
            return None
        return NOT_ALLOWED


Verdict = LocalReply | _PathVerdict | None


def _verdict(deny: list[_Rule], allow: list[_Rule], has_allow: bool) -> Verdict:
    """What rules that read only the method and the path decide for one method."""
    if any(r.paths is None for r in deny):
        return DENIED_BY_POLICY
    if not deny:
        if not has_allow or any(r.paths is None for r in allow):
            return None
        if not allow:
            return NOT_ALLOWED
    return _PathVerdict(deny, allow, has_allow)


def method_table(
    deny: Sequence[_Rule], allow: Sequence[_Rule], has_allow: bool
) -> tuple[dict[bytes, Verdict], Verdict] | None:
    """The verdicts by method (and for any other method) when every rule reads
    only the method and the path; None when one reads more (principal, address,
    headers, claims)."""
    if not all(r.operation_only for r in (*deny, *allow)):
        return None
    named = {m for r in (*deny, *allow) if r.methods is not None for m in r.methods}

    def applying(rules: Sequence[_Rule], method: bytes | None) -> list[_Rule]:
        return [r for r in rules if r.methods is None or method in r.methods]

    table = {m: _verdict(applying(deny, m), applying(allow, m), has_allow) for m in named}
    return table, _verdict(applying(deny, None), applying(allow, None), has_allow)


class Authz:
    """The built-in authorization filter for one service's access policies."""

    name = "authz"

    def __init__(self, policies: Sequence[Access], counters: Counters | None = None) -> None:
        self.counters = counters if counters is not None else Counters()
        self._deny = tuple(_Rule(r) for p in policies if p.action == "deny" for r in p.rules)
        self._allow = tuple(_Rule(r) for p in policies if p.action == "allow" for r in p.rules)
        self._has_allow = any(p.action == "allow" for p in policies)
        header = next((p.principal_header for p in policies if p.principal_header), None)
        self._principal_header = header.lower().encode("latin-1") if header else None
        # The usual policies read only the method and the path: one dict lookup
        # decides, and the path is normalised only when a pattern needs it.
        compiled = method_table(self._deny, self._allow, self._has_allow)
        self._by_method: dict[bytes, Verdict] | None = None
        self._other: Verdict = None
        if compiled is not None:
            self._by_method, self._other = compiled

    @property
    def active(self) -> bool:
        """False when no policy applies: the chain leaves the filter out."""
        return bool(self._deny) or self._has_allow

    def principal(self, ctx: RequestContext) -> str:
        if ctx.peer is not None:
            return ctx.peer
        if self._principal_header is not None:
            raw = ctx.header(self._principal_header)
            if raw is not None:
                return raw.decode("latin-1")
        return ctx.client_ip

    def on_request(self, ctx: RequestContext) -> LocalReply | None:
        by_method = self._by_method
        if by_method is None:
            return self._decide(ctx)
        verdict = by_method.get(ctx.method, self._other)
        if verdict is None:
            return None
        if verdict.__class__ is _PathVerdict:
            assert isinstance(verdict, _PathVerdict)
            verdict = verdict.decide(normalize_path(ctx.path))
            if verdict is None:
                return None
        self.counters.incr(
            "authz_denied", "deny_policy" if verdict is DENIED_BY_POLICY else "no_allow"
        )
        assert isinstance(verdict, LocalReply)
        return verdict

    def _decide(self, ctx: RequestContext) -> LocalReply | None:
        """Rule by rule, for policies that read more than the method and the path."""
        principal = self.principal(ctx)
        path = normalize_path(ctx.path)
        for rule in self._deny:
            if rule.matches(ctx, principal, path):
                self.counters.incr("authz_denied", "deny_policy")
                return DENIED_BY_POLICY
        if not self._has_allow:
            return None
        for rule in self._allow:
            if rule.matches(ctx, principal, path):
                return None
        self.counters.incr("authz_denied", "no_allow")
        return NOT_ALLOWED
