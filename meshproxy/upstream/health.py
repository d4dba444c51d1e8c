"""Active health checking as a state machine: when to probe which endpoint,
and what the results mean.  The HTTP probe itself is the I/O layer's job.

The I/O layer's loop:  ``for probe in checker.due(now): start GET probe.path``
on ``probe.endpoint`` with ``probe.timeout``, then report
``checker.on_probe_result(probe, status_or_None, now)``; sleep until
``checker.next_deadline``.

Semantics follow Envoy.  A probe passes when it answers one of
``expected_statuses`` within ``timeout``; a timeout, a connection failure
(status ``None``) or another status fails it.  A healthy endpoint turns
unhealthy after ``unhealthy_threshold`` consecutive failures, an unhealthy one
healthy after ``healthy_threshold`` consecutive successes.  Before its first
result an endpoint is ``unknown`` and the first result decides at once (Envoy
also needs a single pass at start-up); unlike Envoy, ``unknown`` endpoints
take traffic, because the sidecar does not hold requests back while a cluster
warms up.  The next probe is due ``interval`` plus up to ``jitter`` after the
previous one ended; first probes are spread over the first ``jitter``.  A
probe whose result has not come back by its deadline counts as failed, and
its late result is ignored.

Must not do I/O or read a clock: ``now`` and ``rand`` are passed in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from meshproxy.config.policy import HealthCheck
from meshproxy.upstream.endpoint import EndpointState


@dataclass(frozen=True, slots=True, eq=False)
class Probe:
    """One health check to run: ``GET path`` on ``endpoint`` with ``Host: host``."""

    endpoint: EndpointState
    host: str
    path: str
    timeout: float
    deadline: float


class _Target:
    __slots__ = ("endpoint", "failures", "in_flight", "next_at", "successes")

    def __init__(self, endpoint: EndpointState, next_at: float) -> None:
        self.endpoint = endpoint
        self.next_at = next_at
        self.in_flight: Probe | None = None
        self.successes = 0
        self.failures = 0


class HealthChecker:
    def __init__(
        self,
        config: HealthCheck,
        endpoints: Sequence[EndpointState],
        *,
        host: str,
        now: float,
        rand: Callable[[], float],
        on_change: Callable[[float], None] | None = None,
    ) -> None:
        self.config = config
        self.host = host
        self._rand = rand
        self._on_change = on_change
        self._expected = frozenset(config.expected_statuses)
        self._targets: dict[int, _Target] = {}
        for endpoint in endpoints:
            endpoint.health = "unknown"
            self._targets[id(endpoint)] = _Target(endpoint, now + rand() * config.jitter)

    @property
    def next_deadline(self) -> float:
        deadline = math.inf
        for target in self._targets.values():
            due = target.in_flight.deadline if target.in_flight else target.next_at
            deadline = min(deadline, due)
        return deadline

    def _schedule(self, target: _Target, now: float) -> None:
        target.next_at = now + self.config.interval + self._rand() * self.config.jitter

    def due(self, now: float) -> list[Probe]:
        """The probes to start now; probes past their deadline count as failed."""
        probes = []
        for target in self._targets.values():
            probe = target.in_flight
            if probe is not None and now >= probe.deadline:
                target.in_flight = None
                self._schedule(target, probe.deadline)
                self._record(target, False, now)
            if target.in_flight is None and now >= target.next_at:
                probe = Probe(
                    target.endpoint,
                    self.host,
                    self.config.path,
                    self.config.timeout,
                    now + self.config.timeout,
                )
                target.in_flight = probe
                probes.append(probe)
        return probes

    def on_probe_result(self, probe: Probe, status: int | None, now: float) -> bool:
        """Consume a probe's result (``None``: no response).  True when the
        endpoint's health changed."""
        target = self._targets.get(id(probe.endpoint))
        if target is None or target.in_flight is not probe:
            return False
        target.in_flight = None
        self._schedule(target, now)
        passed = status in self._expected and now < probe.deadline
        return self._record(target, passed, now)

    def _record(self, target: _Target, passed: bool, now: float) -> bool:
        endpoint = target.endpoint
        if passed:
            target.successes += 1
            target.failures = 0
            turn = endpoint.health == "unknown" or (
                endpoint.health == "unhealthy" and target.successes >= self.config.healthy_threshold
            )
            new = "healthy"
        else:
            target.failures += 1
            target.successes = 0
            turn = endpoint.health == "unknown" or (
                endpoint.health == "healthy" and target.failures >= self.config.unhealthy_threshold
            )
            new = "unhealthy"
        if not turn:
            return False
        endpoint.health = "healthy" if new == "healthy" else "unhealthy"
        if self._on_change is not None:
            self._on_change(now)
        return True
