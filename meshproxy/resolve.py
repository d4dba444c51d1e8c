"""Where a request goes: (listener, request head, client) -> a route or a local reply.

This is the seam between the protocol code (``http1``, ``tcp``) and the
routing / load-balancing rooms.  A ``Resolver`` is built from one snapshot
(``CompiledRoutes`` + ``Upstreams``, the latter keeping live endpoint state
from the previous resolver) and replaced whole when the snapshot changes; the
protocols only call ``resolve`` and ``resolve_tcp``.

Outbound: the service is the one named by the Host (or the absolute-form
authority), exact name or the label before the first dot; the route table of
that service picks the rule and the backend (service, subset); a host whose
first rule takes every request is answered from the host alone (its route, or
the fast path's ``SplitRoutes`` of a weighted split).  Inbound: the
listener's ``local_app``, through a one-endpoint cluster so that the counters
and the protocol code are the same.  The answer is a ``Route``: one per
(rule, backend) and snapshot, shared by requests, carrying what the data path
needs without looking into the rule again.  Choosing the endpoint is left to
the caller (``Route.cluster.pick``), which knows the time.

It must not do I/O, read clocks or keep per-connection state.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from meshproxy import fastpath as fp
from meshproxy.config import Listener, Snapshot
from meshproxy.config.policy import Policy
from meshproxy.config.types import parse_host_port
from meshproxy.routing import CompiledRoutes, CompiledRule, Decision, RetryBudget, hash_key
from meshproxy.routing.actions import FaultPolicy, HeaderEdit
from meshproxy.routing.retry import RetryPolicy
from meshproxy.routing.table import MirrorPolicy
from meshproxy.upstream import Cluster, EndpointState, Upstreams, UpstreamService


class Route:
    """What one (rule, backend) asks of a request.  Built once per snapshot
    and shared between requests: never mutate it.

    ``plain`` is true when the rule needs nothing beyond forwarding (no
    timeout of its own, retries, header edits, rewrites, mirror or fault): the
    data path then takes its shortest way."""

    __slots__ = (
        "budget",
        "cluster",
        "decision",
        "fault",
        "hashed",
        "host_rewrite",
        "mirror",
        "mirror_cluster",
        "name",
        "plain",
        "request_headers",
        "response_headers",
        "retry",
        "rewrites_path",
        "service",
        "subset",
        "timeout",
    )

    def __init__(
        self,
        service: str,
        subset: str | None,
        name: str,
        cluster: Cluster,
        decision: Decision | None,
        budget: RetryBudget,
    ) -> None:
        self.service = service
        self.subset = subset if subset is not None else "-"
        self.name = name  # bounded: a config path, fit for a metric label
        self.cluster = cluster
        self.decision = decision
        self.budget = budget
        rule = decision.rule if decision is not None else None
        self.timeout: float | None = rule.timeout if rule is not None else None
        self.retry: RetryPolicy | None = rule.retry if rule is not None else None
        self.request_headers: HeaderEdit | None = rule.request_headers if rule else None
        self.response_headers: HeaderEdit | None = rule.response_headers if rule else None
        self.rewrites_path = rule is not None and rule.prefix_rewrite is not None
        self.host_rewrite: bytes | None = rule.host_rewrite if rule is not None else None
        self.mirror: MirrorPolicy | None = rule.mirror if rule is not None else None
        self.fault: FaultPolicy | None = rule.fault if rule is not None else None
        self.mirror_cluster: Cluster | None = None  # set by the resolver with ``mirror``
        # Whether the balancer wants a key (consistent hashing).
        self.hashed = bool(
            cluster.hash_header is not None
            or cluster.hash_cookie is not None
            or cluster.hash_client
        )
        self.plain = (
            self.timeout is None
            and self.retry is None
            and self.request_headers is None
            and self.response_headers is None
            and not self.rewrites_path
            and self.host_rewrite is None
            and self.mirror is None
            and self.fault is None
        )

    def balance_key(self, headers: list[tuple[bytes, bytes]], client_ip: str) -> bytes | None:
        """The consistent-hash key of a request, or None."""
        if not self.hashed:
            return None
        c = self.cluster
        return hash_key(headers, client_ip, c.hash_header, c.hash_cookie, c.hash_client)

    def upstream_path(self, path: bytes) -> bytes:
        decision = self.decision
        if not self.rewrites_path or decision is None:
            return path
        return decision.upstream_target(path)

    def __repr__(self) -> str:
        return f"Route({self.service!r}, {self.subset!r}, {self.name!r})"


class Target:
    """One endpoint chosen for a TCP connection, with the cluster it came from."""

    __slots__ = ("cluster", "endpoint", "host", "key", "port", "service")

    def __init__(self, service: str, cluster: Cluster, endpoint: EndpointState) -> None:
        self.service = service
        self.cluster = cluster
        self.endpoint = endpoint
        self.host = endpoint.address
        self.port = endpoint.port
        self.key = (endpoint.address, endpoint.port)

    def __repr__(self) -> str:
        return f"Target({self.service!r}, {self.host!r}, {self.port})"


class LocalReply:
    """Answer the client directly with ``status`` and a short ``reason``;
    ``flag`` is the Envoy response flag the exchange records."""

    __slots__ = ("flag", "reason", "status")

    def __init__(self, status: int, reason: str, flag: str) -> None:
        self.status = status
        self.reason = reason
        self.flag = flag

    def __repr__(self) -> str:
        return f"LocalReply({self.status}, {self.reason!r})"


UNKNOWN_SERVICE = LocalReply(404, "unknown service", "NR")
NO_ROUTE = LocalReply(404, "no route", "NR")
NO_HOST = LocalReply(400, "missing host", "DPE")
NO_ENDPOINTS = LocalReply(503, "no healthy upstream", "UH")


class _KeyedSplit:
    """A split by a request key (header, cookie, client address); a request
    without the key gets a random bucket, as ``CompiledRule.choose`` does."""

    __slots__ = ("client", "cookie", "header", "routes")

    def __init__(self, rule: CompiledRule, routes: fp.SplitRoutes[Route]) -> None:
        self.routes = routes
        self.header = rule.hash_header
        self.cookie = rule.hash_cookie
        self.client = rule.hash_client

    def pick(self, headers: list[tuple[bytes, bytes]], client_ip: str) -> Route:
        key = hash_key(headers, client_ip, self.header, self.cookie, self.client)
        if key is None:
            return self.routes.pick()
        return self.routes.pick_key(key)


class Resolver:
    __slots__ = (
        "_budgets",
        "_by_host",
        "_fixed",
        "_keyed",
        "_local",
        "_routes",
        "_services",
        "_splits",
        "routes",
        "upstreams",
    )

    def __init__(
        self,
        snapshot: Snapshot,
        listeners: list[Listener],
        local_service: str,
        *,
        now: float = 0.0,
        local_zone: str | None = None,
        previous: Resolver | None = None,
        rand: Callable[[], float] | None = None,
    ) -> None:
        """Compile ``snapshot``; raises ``ConfigError`` when it cannot be routed."""
        rand = rand or random.Random().random
        self.routes = CompiledRoutes.from_snapshot(snapshot, rand)
        self.upstreams: Upstreams = Upstreams.from_snapshot(
            snapshot,
            now=now,
            local_zone=local_zone,
            rand=rand,
            previous=previous.upstreams if previous is not None else None,
        )
        # Retry budgets count retries in flight: they outlive a snapshot swap.
        old = previous._budgets if previous is not None else {}
        self._budgets: dict[str, RetryBudget] = {
            name: old.get(name) or RetryBudget() for name in snapshot.services
        }
        self._services = list(snapshot.services)
        self._by_host: dict[bytes, str] = {
            name.lower().encode(): name for name in snapshot.services
        }
        self._routes: dict[Decision, Route] = {}
        # Hosts whose first rule matches every request (a service without a
        # route table has one such default rule) are answered by the Host
        # alone, without a look at the table: ``_fixed`` when the rule has
        # one live backend, ``_splits`` when it splits at random, ``_keyed``
        # when it splits by a key (``CompiledRule.choose``, precomputed).
        self._fixed: dict[bytes, Route] = {}
        self._splits: dict[bytes, fp.SplitRoutes[Route]] = {}
        self._keyed: dict[bytes, _KeyedSplit] = {}
        for host_name, name in self._by_host.items():
            rules = self.routes.rules_for(name, host_name)
            if not rules or not rules[0].match_all:
                continue
            rule = rules[0]
            if rule.fixed is not None:
                self._fixed[host_name] = self._route_for(rule.fixed)
            else:
                routes = tuple(self._route_for(d) for d in rule.decisions[0])
                split = fp.SplitRoutes(routes, rule.bounds, rand)
                if rule.hash_header is not None or rule.hash_cookie is not None or rule.hash_client:
                    self._keyed[host_name] = _KeyedSplit(rule, split)
                else:
                    self._splits[host_name] = split
        self._local: dict[str, Route] = {}
        for listener in listeners:
            if listener.local_app:
                host, port = parse_host_port(listener.local_app)
                self._local[listener.name] = self._local_route(
                    local_service, host, port, now, rand, previous, listener.name
                )

    def _local_route(
        self,
        service: str,
        host: str,
        port: int,
        now: float,
        rand: Callable[[], float],
        previous: Resolver | None,
        listener: str,
    ) -> Route:
        old = previous._local.get(listener) if previous is not None else None
        endpoint = None
        if old is not None:
            kept = old.cluster.endpoints[0]
            if (kept.address, kept.port) == (host, port):
                endpoint = kept
        endpoint = endpoint or EndpointState(host, port)
        policy = Policy(service=service)
        upstream = UpstreamService(service, [endpoint], policy, now=now, rand=rand)
        cluster = Cluster(
            service, upstream, [endpoint], policy.load_balancer, local_zone=None, rand=rand
        )
        budget = old.budget if old is not None else RetryBudget()
        return Route(service, None, "inbound", cluster, None, budget)

    def resolve(
        self,
        listener: str,
        head: fp.RequestHead,
        authority: bytes | None,
        client_ip: str,
        path: bytes,
    ) -> Route | LocalReply:
        """``authority``: the absolute-form authority, else the Host value;
        ``path``: the origin-form target."""
        local = self._local.get(listener)
        if local is not None:
            return local
        if not authority:
            return NO_HOST
        fixed = self._fixed.get(authority)
        if fixed is not None:
            return fixed
        split = self._splits.get(authority)
        if split is not None:
            return split.pick()
        keyed = self._keyed.get(authority)
        if keyed is not None:
            return keyed.pick(head.headers, client_ip)
        service = self._service_for(authority)
        if service is None:
            return UNKNOWN_SERVICE
        decision = self.routes.select(
            service, authority, head.method, path, head.headers, client_ip
        )
        if decision is None:
            return NO_ROUTE
        route = self._routes.get(decision)
        if route is None:
            route = self._route_for(decision)
        return route

    def _route_for(self, decision: Decision) -> Route:
        backend = decision.backend
        cluster = self.upstreams.cluster(backend.service, backend.subset)
        assert cluster is not None  # the route table checked every backend
        name = decision.rule.path.removeprefix("snapshot.")
        route = Route(
            backend.service,
            backend.subset,
            name,
            cluster,
            decision,
            self._budgets[backend.service],
        )
        mirror = route.mirror
        if mirror is not None:
            route.mirror_cluster = self.upstreams.cluster(
                mirror.target.service, mirror.target.subset
            )
        self._routes[decision] = route
        return route

    def resolve_tcp(self, service: str, now: float) -> Target | LocalReply:
        cluster = self.upstreams.cluster(service)
        if cluster is None:
            return UNKNOWN_SERVICE
        endpoint = cluster.pick(None, now)
        if endpoint is None:
            return NO_ENDPOINTS
        return Target(service, cluster, endpoint)

    def _service_for(self, authority: bytes) -> str | None:
        by_host = self._by_host
        name = by_host.get(authority)
        if name is not None:
            return name
        host = authority.lower()
        if host[:1] == b"[":
            return None
        host = host.partition(b":")[0]
        name = by_host.get(host)
        if name is None:
            name = by_host.get(host.partition(b".")[0])
        return name

    def service_names(self) -> list[str]:
        return sorted(self._services)
