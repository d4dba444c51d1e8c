"""The compiled route table: (service, host, request) -> rule -> weighted backend.

``CompiledRoutes.from_snapshot`` checks what the models alone cannot (every
backend and mirror names a known service and subset, no host is routed twice)
and refuses the snapshot whole with the dotted path of each bad field.  It then
precomputes everything a request needs: per service, the rules for each host;
per rule, its compiled match blocks, the bucket bounds of its split, and one
``Decision`` per backend (per match block when the rule rewrites a prefix),
so that ``select`` allocates nothing in the common case and the cheapest
table (one rule matching every request, one backend) costs a few lookups.

Semantics (Istio and the Gateway API where they agree): rules are tried in
order and the first match wins; match blocks of a rule are OR, the conditions
of a block AND.  A host is looked up exactly, then by the longest ``*.suffix``,
then in the service's table without hosts; a service (or host) no table covers
gets one default rule to all the service's endpoints.  Endpoint choice inside
the chosen subset is the balancer's (``meshproxy.upstream``), not this room's.
No clock, no socket: the random source is passed in.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Callable, Mapping

from meshproxy.config import ConfigError
from meshproxy.config.policy import Endpoint
from meshproxy.config.routes import RouteTable, Rule
from meshproxy.config.snapshot import Snapshot
from meshproxy.routing.actions import FaultPolicy, HeaderEdit, chosen, replace_prefix
from meshproxy.routing.match import (
    MatchBlock,
    RequestView,
    hash_key,
    host_without_port,
)
from meshproxy.routing.retry import RetryPolicy
from meshproxy.routing.split import fastest_split_bucket, random_bucket, split_bounds

_split_bucket = fastest_split_bucket()


class Target:
    """A destination: a service, or one subset of it, with its endpoints."""

    __slots__ = ("endpoints", "labels", "service", "subset")

    def __init__(
        self,
        service: str,
        subset: str | None,
        labels: Mapping[str, str],
        endpoints: tuple[Endpoint, ...],
    ) -> None:
        self.service = service
        self.subset = subset
        self.labels = labels  # the subset's label selector; empty for the whole service
        self.endpoints = endpoints

    def __repr__(self) -> str:
        return f"Target({self.service!r}, {self.subset!r})"


class MirrorPolicy:
    __slots__ = ("percent", "target")

    def __init__(self, target: Target, percent: float) -> None:
        self.target = target
        self.percent = percent


def mirror_for(policy: MirrorPolicy | None, rand: float) -> Target | None:
    """Where to send a copy of this request, if anywhere; ``rand`` in [0, 1)."""
    if policy is None or not chosen(policy.percent, rand):
        return None
    return policy.target


class Decision:
    """The answer for one request: the rule that matched and the backend chosen.
    Shared between requests: never mutate it."""

    __slots__ = ("backend", "matched_prefix", "rule")

    def __init__(self, rule: CompiledRule, backend: Target, matched_prefix: bytes) -> None:
        self.rule = rule
        self.backend = backend
        self.matched_prefix = matched_prefix  # what a prefix rewrite replaces

    def upstream_target(self, target: bytes) -> bytes:
        """The request target to send upstream (origin form), prefix rewritten."""
        if not target.startswith(b"/"):
            target = _origin_form(target)
        replacement = self.rule.prefix_rewrite
        if replacement is None:
            return target
        return replace_prefix(target, self.matched_prefix, replacement)

    def __repr__(self) -> str:
        return f"Decision(rule={self.rule.path!r}, backend={self.backend!r})"


def _origin_form(target: bytes) -> bytes:
    scheme_end = target.find(b"://")
    if scheme_end < 0:
        return target
    slash = target.find(b"/", scheme_end + 3)
    if slash >= 0:
        return target[slash:]
    query = target.find(b"?", scheme_end + 3)
    return b"/" + target[query:] if query >= 0 else b"/"


class CompiledRule:
    """One rule, ready for requests.  The per-rule settings the proxy applies
    are plain attributes: ``timeout`` (seconds for the whole request, retries
    included, or None), ``retry`` (None: no retries; always None when the
    rule injects faults), ``request_headers``/``response_headers`` (None: no
    edit), ``prefix_rewrite``/``host_rewrite`` (bytes or None), ``mirror``,
    ``fault``.  ``path`` names the rule in the config, for logs."""

    __slots__ = (
        "blocks",
        "bounds",
        "decisions",
        "fault",
        "fixed",
        "hash_client",
        "hash_cookie",
        "hash_header",
        "host_rewrite",
        "match_all",
        "mirror",
        "only",
        "path",
        "prefix_rewrite",
        "request_headers",
        "response_headers",
        "retry",
        "targets",
        "timeout",
    )

    def __init__(
        self, spec: Rule, path: str, targets: tuple[Target, ...], mirror: MirrorPolicy | None
    ) -> None:
        self.path = path
        self.blocks = tuple(MatchBlock(block) for block in spec.match)
        rewrite = spec.rewrite
        self.prefix_rewrite = rewrite.prefix.encode() if rewrite and rewrite.prefix else None
        self.host_rewrite = rewrite.host.encode() if rewrite and rewrite.host else None
        # A prefix rewrite depends on which block matched, so such a rule is
        # never taken as matching everything: its blocks are tried in order.
        per_block = self.prefix_rewrite is not None and bool(self.blocks)
        self.match_all = not self.blocks or (
            not per_block and any(block.match_all for block in self.blocks)
        )
        self.targets = targets
        weights = [b.weight for b in spec.backends] or [1]
        self.bounds = split_bounds(weights)
        live = [i for i, w in enumerate(weights) if w > 0]
        self.only = live[0] if len(live) == 1 else -1
        hash_on = spec.hash_on
        self.hash_header = (
            hash_on.header.lower().encode() if hash_on and hash_on.header is not None else None
        )
        self.hash_cookie = (
            hash_on.cookie.encode() if hash_on and hash_on.cookie is not None else None
        )
        self.hash_client = bool(hash_on and hash_on.client_address)
        self.timeout = spec.timeout
        self.fault = FaultPolicy(spec.fault) if spec.fault is not None else None
        self.retry = (
            RetryPolicy(spec.retries) if spec.retries is not None and self.fault is None else None
        )
        headers = spec.headers
        self.request_headers = HeaderEdit.of(headers.request) if headers else None
        self.response_headers = HeaderEdit.of(headers.response) if headers else None
        self.mirror = mirror
        if per_block:
            self.decisions = tuple(self._decisions(block.path_prefix) for block in self.blocks)
        else:
            # Without a rewrite the matched block does not change the answer.
            shared = self._decisions(b"/")
            self.decisions = (shared,) * max(len(self.blocks), 1)
        # The answer when nothing about the request can change it.
        self.fixed = self.decisions[0][self.only] if self.only >= 0 and self.match_all else None

    def _decisions(self, matched_prefix: bytes) -> tuple[Decision, ...]:
        return tuple(Decision(self, target, matched_prefix) for target in self.targets)

    def matching_block(self, request: RequestView) -> int:
        """The index of the first block the request matches, or -1."""
        for i, block in enumerate(self.blocks):
            if block.matches(request):
                return i
        return -1

    def choose(
        self,
        block: int,
        headers: list[tuple[bytes, bytes]],
        client_address: str,
        rand: Callable[[], float],
    ) -> Decision:
        decisions = self.decisions[block]
        if self.only >= 0:
            return decisions[self.only]
        key = hash_key(
            headers, client_address, self.hash_header, self.hash_cookie, self.hash_client
        )
        bucket = _split_bucket(key) if key is not None else random_bucket(rand())
        return decisions[bisect_right(self.bounds, bucket)]


class _ServiceRoutes:
    """The rules of one service by host: exact names, ``*.suffix`` (longest
    first), then ``fallback`` (the table without hosts, or the default rule)."""

    __slots__ = ("exact", "fallback", "wildcards")

    def __init__(self) -> None:
        self.exact: dict[bytes, tuple[CompiledRule, ...]] | None = None
        self.wildcards: list[tuple[bytes, tuple[CompiledRule, ...]]] = []
        self.fallback: tuple[CompiledRule, ...] = ()

    def rules_for(self, host: bytes | None) -> tuple[CompiledRule, ...]:
        if host is None or self.exact is None:
            return self.fallback
        name = host_without_port(host)
        rules = self.exact.get(name)
        if rules is not None:
            return rules
        for suffix, rules in self.wildcards:
            if name.endswith(suffix) and len(name) > len(suffix):
                return rules
        return self.fallback


class CompiledRoutes:
    """Every route of a snapshot, compiled.  Build one per snapshot, swap it
    whole; it is never changed after ``from_snapshot`` returns."""

    __slots__ = ("_rand", "_services", "_targets")

    def __init__(
        self,
        services: dict[str, _ServiceRoutes],
        targets: dict[tuple[str, str | None], Target],
        rand: Callable[[], float],
    ) -> None:
        self._services = services
        self._targets = targets
        self._rand = rand

    @classmethod
    def from_snapshot(
        cls,
        snapshot: Snapshot,
        rand: Callable[[], float] = random.random,
        where: str = "snapshot",
    ) -> CompiledRoutes:
        """Compile ``snapshot`` or raise ``ConfigError`` naming every bad field
        as ``where.routes.N...``.  ``rand`` draws in [0, 1) for requests that
        carry no split key."""
        return _Compiler(snapshot, where).build(rand)

    def select(
        self,
        service: str,
        host: bytes | None,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        client_address: str = "",
    ) -> Decision | None:
        """The decision for a request to ``service``, or None when no rule
        matches (answer 404) or the service is unknown.  ``client_address`` is
        the peer's address without its port."""
        routes = self._services.get(service)
        if routes is None:
            return None
        rules = routes.fallback if routes.exact is None else routes.rules_for(host)
        request: RequestView | None = None
        for rule in rules:
            if rule.match_all:
                fixed = rule.fixed
                if fixed is not None:
                    return fixed
                return rule.choose(0, headers, client_address, self._rand)
            if request is None:
                request = RequestView(method, target, headers)
            block = rule.matching_block(request)
            if block >= 0:
                return rule.choose(block, headers, client_address, self._rand)
        return None

    def rules_for(self, service: str, host: bytes | None) -> tuple[CompiledRule, ...]:
        """The rules ``select`` tries, in order, for ``host`` of ``service``
        (empty for an unknown service)."""
        routes = self._services.get(service)
        if routes is None:
            return ()
        return routes.rules_for(host)

    def subset_endpoints(self, service: str, subset: str | None = None) -> tuple[Endpoint, ...]:
        """The endpoints of a subset (``None``: the whole service) as of this
        snapshot; raises ``KeyError`` for an unknown service or subset."""
        return self._targets[(service, subset)].endpoints

    def targets(self) -> list[Target]:
        """Every service and subset a request could be sent or mirrored to."""
        return list(self._targets.values())


class _Compiler:
    def __init__(self, snapshot: Snapshot, where: str) -> None:
        self.snapshot = snapshot
        self.where = where
        self.problems: list[tuple[str, str]] = []
        self.subsets = {policy.service: policy.subsets for policy in snapshot.policies}
        self.targets: dict[tuple[str, str | None], Target] = {}
        for name, service in snapshot.services.items():
            endpoints = tuple(service.endpoints)
            self.targets[(name, None)] = Target(name, None, {}, endpoints)
            for subset_name, subset in self.subsets.get(name, {}).items():
                selector = dict(subset.labels)
                members = tuple(
                    e for e in endpoints if all(e.labels.get(k) == v for k, v in selector.items())
                )
                self.targets[(name, subset_name)] = Target(name, subset_name, selector, members)

    def build(self, rand: Callable[[], float]) -> CompiledRoutes:
        services: dict[str, _ServiceRoutes] = {}
        owners: dict[tuple[str, str], int] = {}  # (service, host) -> table index
        for t, table in enumerate(self.snapshot.routes):
            path = f"{self.where}.routes.{t}"
            rules = tuple(
                self._rule(table, rule, f"{path}.rules.{r}") for r, rule in enumerate(table.rules)
            )
            routes = services.setdefault(table.service, _ServiceRoutes())
            hosts = table.hosts if table.hosts and "*" not in table.hosts else []
            claimed = [(h, f"{path}.hosts.{i}") for i, h in enumerate(hosts)] or [
                ("*", f"{path}.hosts")
            ]
            for host, where in claimed:
                other = owners.setdefault((table.service, host), t)
                if other != t:
                    what = f"host {host!r}" if host != "*" else "every host (no hosts given)"
                    self.problems.append(
                        (
                            where,
                            f"{what} of service {table.service!r} is already routed "
                            f"by routes.{other}",
                        )
                    )
            if not hosts:
                routes.fallback = rules
                continue
            if routes.exact is None:
                routes.exact = {}
            for host in hosts:
                if host.startswith("*."):
                    routes.wildcards.append((host[1:].encode(), rules))
                else:
                    routes.exact[host.encode()] = rules
        for name in self.snapshot.services:
            routes = services.setdefault(name, _ServiceRoutes())
            if not routes.fallback:
                routes.fallback = (self._default_rule(name),)
        for routes in services.values():
            routes.wildcards.sort(key=lambda pair: -len(pair[0]))
        if self.problems:
            raise ConfigError(self.problems)
        return CompiledRoutes(services, self.targets, rand)

    def _default_rule(self, service: str) -> CompiledRule:
        return CompiledRule(
            Rule(), f"default route of {service}", (self.targets[(service, None)],), None
        )

    def _target(self, service: str, subset: str | None, path: str, named: bool) -> Target | None:
        target = self.targets.get((service, subset))
        if target is not None:
            return target
        if (service, None) not in self.targets:
            where = f"{path}.service" if named else path
            self.problems.append((where, f"unknown service {service!r}: not in services"))
        else:
            known = ", ".join(sorted(self.subsets.get(service, {}))) or "none"
            self.problems.append(
                (
                    f"{path}.subset",
                    f"unknown subset {subset!r} of service {service!r} (known: {known})",
                )
            )
        return None

    def _rule(self, table: RouteTable, rule: Rule, path: str) -> CompiledRule:
        targets: list[Target] = []
        if not rule.backends:
            target = self._target(table.service, None, f"{path}.backends", named=False)
            targets.append(target or Target(table.service, None, {}, ()))
        for b, backend in enumerate(rule.backends):
            service = backend.service or table.service
            named = backend.service is not None
            target = self._target(service, backend.subset, f"{path}.backends.{b}", named)
            targets.append(target or Target(service, backend.subset, {}, ()))
        mirror = None
        if rule.mirror is not None:
            service = rule.mirror.service or table.service
            named = rule.mirror.service is not None
            target = self._target(service, rule.mirror.subset, f"{path}.mirror", named)
            if target is not None:
                mirror = MirrorPolicy(target, rule.mirror.percent)
        return CompiledRule(rule, path, tuple(targets), mirror)
