"""All clusters of one snapshot: one ``UpstreamService`` per service, one
``Cluster`` for the whole service and one per subset.

Built whole from a snapshot and swapped whole, like the route table.  When
built from a new snapshot with the previous ``Upstreams``, an endpoint that
is still there (same service, address and port) keeps its live state: health,
ejection, counters and, if its settings did not change, its breaker.
Requests in flight across the swap finish against the old ``Cluster``: its
counters are the same objects, and the old service passes outcomes on to the
new one, so the live outlier detector and breakers see them.  No I/O and no clock here.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from meshproxy.config.policy import Policy
from meshproxy.config.snapshot import Snapshot
from meshproxy.upstream.breakers import EndpointBreaker
from meshproxy.upstream.cluster import Cluster, UpstreamService
from meshproxy.upstream.endpoint import EndpointState
from meshproxy.upstream.health import HealthChecker


class Upstreams:
    def __init__(self) -> None:
        self.services: dict[str, UpstreamService] = {}
        self._clusters: dict[tuple[str, str | None], Cluster] = {}

    @classmethod
    def from_snapshot(
        cls,
        snapshot: Snapshot,
        *,
        now: float,
        local_zone: str | None = None,
        rand: Callable[[], float] | None = None,
        previous: Upstreams | None = None,
    ) -> Upstreams:
        rand = rand or random.Random().random
        policies = {p.service: p for p in snapshot.policies}
        upstreams = cls()
        for name, service in snapshot.services.items():
            policy = policies.get(name) or Policy(service=name)
            old = previous.services.get(name) if previous is not None else None
            kept = {(e.address, e.port): e for e in old.endpoints} if old is not None else {}
            endpoints = []
            carried: set[int] = set()
            for spec in service.endpoints:
                state = kept.get((spec.address, spec.port))
                if state is None:
                    state = EndpointState(spec.address, spec.port)
                else:
                    carried.add(id(state))
                state.labels = dict(spec.labels)
                state.zone = spec.zone
                state.weight = spec.weight
                breaker_config = policy.endpoint_breaker
                if breaker_config is None:
                    state.breaker = None
                elif state.breaker is None or (
                    (state.breaker.threshold, state.breaker.open_timeout)
                    != (breaker_config.consecutive_failures, breaker_config.open_timeout)
                ):
                    state.breaker = EndpointBreaker(breaker_config)
                endpoints.append(state)
            judged = {id(e): e.health for e in endpoints if id(e) in carried}
            upstream = UpstreamService(name, endpoints, policy, now=now, rand=rand)
            if upstream.health_checker is None:
                for endpoint in endpoints:
                    endpoint.health = "healthy"
            elif old is not None and old.health_checker is not None:
                # A new checker starts endpoints as unknown; those the previous
                # checker already judged keep its verdict.
                for endpoint in endpoints:
                    endpoint.health = judged.get(id(endpoint), endpoint.health)
            upstreams.services[name] = upstream
            if old is not None:
                old.successor = upstream
            lb = policy.load_balancer
            upstreams._clusters[name, None] = Cluster(
                name, upstream, endpoints, lb, local_zone=local_zone, rand=rand
            )
            for subset_name, subset in policy.subsets.items():
                members = [
                    e
                    for e in endpoints
                    if all(e.labels.get(k) == v for k, v in subset.labels.items())
                ]
                upstreams._clusters[name, subset_name] = Cluster(
                    f"{name}/{subset_name}", upstream, members, lb, local_zone=local_zone, rand=rand
                )
        return upstreams

    def cluster(self, service: str, subset: str | None = None) -> Cluster | None:
        return self._clusters.get((service, subset))

    def clusters(self) -> list[Cluster]:
        return list(self._clusters.values())

    def health_checkers(self) -> list[HealthChecker]:
        return [s.health_checker for s in self.services.values() if s.health_checker is not None]

    def snapshot_for_admin(self, now: float | None = None) -> dict[str, object]:
        """The admin ``/clusters`` view: per service, its circuit breakers,
        outlier counters and endpoints."""
        view: dict[str, object] = {}
        for name, service in self.services.items():
            whole = self._clusters[name, None]
            view[name] = {
                "circuit_breakers": service.breakers.snapshot(),
                "outlier_detection": (
                    dict(service.detector.ejections) if service.detector is not None else None
                ),
                "panic": whole.panic,
                "endpoints": whole.snapshot_for_admin(now),
            }
        return view
