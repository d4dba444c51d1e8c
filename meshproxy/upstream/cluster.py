"""Clusters: choose the endpoint of a request within a service or a subset,
and keep the endpoint state that choice depends on.

``UpstreamService`` owns what Envoy keeps per cluster: the endpoints, their
outlier detector, health checker and circuit breakers.  ``Cluster`` is a view
over the whole service or over one subset: its endpoints (shared objects),
its balancer(s), and the candidate lists derived from endpoint state.

Why ``pick`` is cheap: every change of endpoint state (health, ejection,
breaker) goes through ``UpstreamService.state_changed``, which marks the
clusters dirty; the next ``pick`` rebuilds the candidate lists once.  Changes
due with time alone (un-ejection, breaker half-open, outlier sweeps) are found
by comparing ``now`` with one precomputed deadline.  The common pick is one
comparison, two flag tests and the balancer's own pick.

How candidates are chosen, in order:
* panic: when fewer than ``healthy_panic_threshold`` percent of the cluster's
  endpoints are routable, all endpoints are candidates (Envoy's panic mode:
  better to try everything than to overload the few that are left);
* a half-open endpoint breaker takes the very next request as its trial;
* locality (zone-aware routing, see ``config.policy.Locality``): the routable
  endpoints of the node's zone, with a share of requests spilled to the other
  zones' when the local zone's routable share is below the threshold;
* otherwise the routable endpoints.
``pick`` returns None when there is no candidate: the caller answers 503
"no healthy upstream".

Sans-IO: ``now`` and ``rand`` are passed in; nothing here does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from meshproxy.config.policy import LoadBalancer, Policy
from meshproxy.upstream.balancers import Balancer, make_balancer
from meshproxy.upstream.breakers import ClusterBreakers
from meshproxy.upstream.endpoint import FAILURE_STATUS, EndpointState, Failure, Outcome
from meshproxy.upstream.health import HealthChecker
from meshproxy.upstream.outlier import OutlierDetector

Rand = Callable[[], float]


class UpstreamService:
    """The shared state of one service's endpoints."""

    def __init__(
        self,
        name: str,
        endpoints: Sequence[EndpointState],
        policy: Policy,
        *,
        now: float,
        rand: Rand,
    ) -> None:
        self.name = name
        self.endpoints = list(endpoints)
        self.policy = policy
        self.breakers = ClusterBreakers(policy.circuit_breakers)
        self.detector = (
            OutlierDetector(policy.outlier_detection, self.endpoints, now)
            if policy.outlier_detection is not None
            else None
        )
        self.health_checker = (
            HealthChecker(
                policy.health_check,
                self.endpoints,
                host=name,
                now=now,
                rand=rand,
                on_change=self.state_changed,
            )
            if policy.health_check is not None
            else None
        )
        self.clusters: list[Cluster] = []
        # Set when a new snapshot replaces this service: outcomes of requests
        # that started before the swap are passed on to the live state.
        self.successor: UpstreamService | None = None
        self._members = frozenset(id(e) for e in self.endpoints)
        self.next_deadline = math.inf
        self._compute_deadline()

    def _compute_deadline(self) -> None:
        deadline = self.detector.next_deadline if self.detector is not None else math.inf
        for endpoint in self.endpoints:
            breaker = endpoint.breaker
            if breaker is not None and breaker.until < deadline:
                deadline = breaker.until
        self.next_deadline = deadline

    def state_changed(self, now: float) -> None:
        for cluster in self.clusters:
            cluster.dirty = True
        self._compute_deadline()

    def advance(self, now: float) -> None:
        """Apply the changes that time alone brings."""
        changed = self.detector.advance(now) if self.detector is not None else False
        for endpoint in self.endpoints:
            breaker = endpoint.breaker
            if breaker is not None and breaker.until <= now:
                changed |= breaker.advance(now)
        if changed:
            self.state_changed(now)
        else:
            self._compute_deadline()

    def on_result(self, endpoint: EndpointState, outcome: Outcome, now: float) -> None:
        """Feed a request's outcome (a status, or a ``Failure``) to the outlier
        detector and the endpoint breaker."""
        successor = self.successor
        if successor is not None:
            while successor.successor is not None:
                successor = successor.successor
            if id(endpoint) in successor._members:
                successor.on_result(endpoint, outcome, now)
                return
        status = outcome if isinstance(outcome, int) else FAILURE_STATUS[outcome]
        breaker = endpoint.breaker
        if status < 500:
            endpoint.consecutive_5xx = 0
            endpoint.consecutive_gateway = 0
            if breaker is not None and breaker.on_success(now):
                self.state_changed(now)
            return
        endpoint.errors += 1
        changed = False
        if self.detector is not None:
            changed = self.detector.record_error(endpoint, status, now)
        if breaker is not None:
            changed |= breaker.on_failure(now)
        if changed:
            self.state_changed(now)


class Cluster:
    """A service or one of its subsets, as a target of load balancing."""

    def __init__(
        self,
        name: str,
        service: UpstreamService,
        endpoints: Sequence[EndpointState],
        config: LoadBalancer,
        *,
        local_zone: str | None,
        rand: Rand,
    ) -> None:
        self.name = name
        self.service = service
        self.breakers = service.breakers
        self.endpoints = list(endpoints)
        self.config = config
        self.local_zone = local_zone
        self._rand = rand
        total_weight = sum(e.weight for e in self.endpoints)
        self._balancer: Balancer = make_balancer(
            config.policy,
            rand,
            total_weight=total_weight,
            minimum_ring_size=config.minimum_ring_size,
        )
        self._remote: Balancer = make_balancer(
            config.policy,
            rand,
            total_weight=total_weight,
            minimum_ring_size=config.minimum_ring_size,
        )
        # Where the consistent-hash key comes from, in the form the routing
        # room's key extraction uses (lower-case header name, cookie name).
        hash_on = config.hash_on
        self.hash_header = hash_on.header.lower().encode() if hash_on and hash_on.header else None
        self.hash_cookie = hash_on.cookie.encode() if hash_on and hash_on.cookie else None
        self.hash_client = bool(hash_on and hash_on.client_address)
        self.panic = False
        self.local_share = 1.0
        self.dirty = True
        self._slow = False
        self._trials: list[EndpointState] = []
        service.clusters.append(self)

    def pick(self, key: bytes | None, now: float) -> EndpointState | None:
        service = self.service
        if now >= service.next_deadline:
            service.advance(now)
        if self.dirty:
            self._refresh()
        if self._slow:
            return self._pick_slow(key, now)
        return self._balancer.pick(key)

    def _pick_slow(self, key: bytes | None, now: float) -> EndpointState | None:
        trials = self._trials
        if trials:
            endpoint = trials[0]
            breaker = endpoint.breaker
            assert breaker is not None
            breaker.start_trial(now)
            self.service.state_changed(now)
            return endpoint
        if self._rand() < self.local_share:
            return self._balancer.pick(key)
        return self._remote.pick(key)

    def _refresh(self) -> None:
        endpoints = self.endpoints
        routable = [e for e in endpoints if e.routable]
        self.panic = bool(endpoints) and (
            len(routable) * 100 < self.config.healthy_panic_threshold * len(endpoints)
        )
        self.local_share = 1.0
        self._trials = []
        if self.panic:
            self._balancer.rebuild(endpoints)
            self._remote.rebuild(())
        else:
            self._trials = [
                e
                for e in endpoints
                if e.breaker is not None
                and e.breaker.wants_trial
                and not e.ejected
                and e.health != "unhealthy"
            ]
            local, remote, self.local_share = self._split_by_zone(routable)
            self._balancer.rebuild(local)
            self._remote.rebuild(remote)
        self._slow = bool(self._trials) or self.local_share < 1.0
        self.dirty = False

    def _split_by_zone(
        self, routable: list[EndpointState]
    ) -> tuple[list[EndpointState], list[EndpointState], float]:
        """(local candidates, remote candidates, share of requests kept local)."""
        locality = self.config.locality
        zone = self.local_zone
        if not locality.enabled or zone is None or len(self.endpoints) < locality.min_cluster_size:
            return routable, [], 1.0
        local_total = sum(1 for e in self.endpoints if e.zone == zone)
        if not local_total:
            return routable, [], 1.0
        local = [e for e in routable if e.zone == zone]
        remote = [e for e in routable if e.zone != zone]
        if not local:
            return remote, [], 1.0
        if not remote:
            return local, [], 1.0
        share = len(local) * 100 / (local_total * locality.min_healthy_percent)
        if share >= 1.0:
            return local, [], 1.0
        return local, remote, share

    def request_started(self, endpoint: EndpointState) -> None:
        endpoint.requests += 1
        endpoint.active_requests += 1

    def request_finished(self, endpoint: EndpointState) -> None:
        if endpoint.active_requests > 0:
            endpoint.active_requests -= 1

    def on_result(self, endpoint: EndpointState, outcome: int | Failure, now: float) -> None:
        self.service.on_result(endpoint, outcome, now)

    def connection_opened(self, endpoint: EndpointState) -> None:
        endpoint.active_connections += 1

    def connection_closed(self, endpoint: EndpointState) -> None:
        if endpoint.active_connections > 0:
            endpoint.active_connections -= 1

    def snapshot_for_admin(self, now: float | None = None) -> list[dict[str, object]]:
        """Every endpoint with its health, ejection, breaker state and counters.
        With ``now``, time-driven changes are applied first and remaining
        ejection times are included."""
        if now is not None and now >= self.service.next_deadline:
            self.service.advance(now)
        return [endpoint.admin_view(now) for endpoint in self.endpoints]
