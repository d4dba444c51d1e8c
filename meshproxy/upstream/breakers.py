"""Circuit breakers: the four per-cluster limits of Envoy, and a per-endpoint
closed / open / half-open breaker.

``ClusterBreakers`` is a set of counters with ``try_*`` / ``release_*`` pairs:
a ``try_*`` that would pass its limit returns an ``Overflow`` (a 503 with a
reason, counted under Envoy's stat name) and changes nothing, so the caller
answers at once instead of queueing.  ``EndpointBreaker`` is a state machine
over request outcomes and ``now``.  Neither reads a clock nor does I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from meshproxy.config.policy import CircuitBreakers
from meshproxy.config.policy import EndpointBreaker as EndpointBreakerConfig

BreakerState = Literal["closed", "open", "half_open"]
CLOSED: BreakerState = "closed"
OPEN: BreakerState = "open"
HALF_OPEN: BreakerState = "half_open"


@dataclass(frozen=True, slots=True)
class Overflow:
    """A request refused by a cluster limit: answer ``status`` with ``reason``."""

    limit: str
    stat: str
    reason: str
    status: int = 503


def _overflow(limit: str, stat: str, value: int) -> Overflow:
    return Overflow(limit, stat, f"upstream overflow: {limit} ({value}) reached")


class ClusterBreakers:
    __slots__ = (
        "_cx_overflow",
        "_pending_overflow",
        "_retry_overflow",
        "_rq_overflow",
        "connections",
        "limits",
        "overflows",
        "pending",
        "requests",
        "retries",
    )

    def __init__(self, limits: CircuitBreakers) -> None:
        self.limits = limits
        self.connections = 0
        self.pending = 0
        self.requests = 0
        self.retries = 0
        # Built once: an overflow is a hot path under overload, when
        # allocating per refusal is the last thing to do.
        self._cx_overflow = _overflow("max_connections", "cx_overflow", limits.max_connections)
        self._pending_overflow = _overflow(
            "max_pending_requests", "rq_pending_overflow", limits.max_pending_requests
        )
        self._rq_overflow = _overflow("max_requests", "rq_overflow", limits.max_requests)
        self._retry_overflow = _overflow("max_retries", "rq_retry_overflow", limits.max_retries)
        self.overflows: dict[str, int] = {
            "cx_overflow": 0,
            "rq_pending_overflow": 0,
            "rq_overflow": 0,
            "rq_retry_overflow": 0,
        }

    def _refuse(self, overflow: Overflow) -> Overflow:
        self.overflows[overflow.stat] += 1
        return overflow

    def try_connection(self) -> Overflow | None:
        if self.connections >= self.limits.max_connections:
            return self._refuse(self._cx_overflow)
        self.connections += 1
        return None

    def release_connection(self) -> None:
        if self.connections > 0:
            self.connections -= 1

    def try_pending(self) -> Overflow | None:
        if self.pending >= self.limits.max_pending_requests:
            return self._refuse(self._pending_overflow)
        self.pending += 1
        return None

    def release_pending(self) -> None:
        if self.pending > 0:
            self.pending -= 1

    def try_request(self) -> Overflow | None:
        if self.requests >= self.limits.max_requests:
            return self._refuse(self._rq_overflow)
        self.requests += 1
        return None

    def release_request(self) -> None:
        if self.requests > 0:
            self.requests -= 1

    def try_retry(self) -> Overflow | None:
        if self.retries >= self.limits.max_retries:
            return self._refuse(self._retry_overflow)
        self.retries += 1
        return None

    def release_retry(self) -> None:
        if self.retries > 0:
            self.retries -= 1

    def snapshot(self) -> dict[str, object]:
        return {
            "connections": [self.connections, self.limits.max_connections],
            "pending_requests": [self.pending, self.limits.max_pending_requests],
            "requests": [self.requests, self.limits.max_requests],
            "retries": [self.retries, self.limits.max_retries],
            "overflows": dict(self.overflows),
        }


class EndpointBreaker:
    """closed --N consecutive failures--> open --open_timeout--> half_open
    --one trial: success--> closed / failure--> open.

    While half-open the endpoint takes exactly one trial request; if its
    outcome never arrives (the caller lost it), another trial is allowed after
    ``open_timeout``.  Outcomes that arrive while open belong to requests sent
    before the breaker opened and change nothing.  An outcome arriving while
    half-open decides, whether or not it is the trial's: both are fresh
    evidence about the endpoint.
    """

    __slots__ = ("failures", "open_timeout", "state", "threshold", "times_opened", "trial", "until")

    def __init__(self, config: EndpointBreakerConfig) -> None:
        self.threshold = config.consecutive_failures
        self.open_timeout = config.open_timeout
        self.state: BreakerState = CLOSED
        self.failures = 0
        self.trial = False
        self.until = math.inf
        self.times_opened = 0

    @property
    def next_deadline(self) -> float:
        return self.until

    def _open(self, now: float) -> None:
        self.state = OPEN
        self.until = now + self.open_timeout
        self.trial = False
        self.failures = 0
        self.times_opened += 1

    def on_failure(self, now: float) -> bool:
        """Record a failure; True when the state changed."""
        if self.state == CLOSED:
            self.failures += 1
            if self.failures < self.threshold:
                return False
            self._open(now)
            return True
        if self.state == HALF_OPEN:
            self._open(now)
            return True
        return False

    def on_success(self, now: float) -> bool:
        """Record a success; True when the state changed."""
        if self.state == CLOSED:
            self.failures = 0
            return False
        if self.state == HALF_OPEN:
            self.state = CLOSED
            self.until = math.inf
            self.trial = False
            return True
        return False

    def advance(self, now: float) -> bool:
        """Let time pass; True when the state changed (open -> half-open, or a
        lost trial given up)."""
        if now < self.until:
            return False
        if self.state == OPEN:
            self.state = HALF_OPEN
        self.trial = False
        self.until = math.inf
        return True

    @property
    def wants_trial(self) -> bool:
        return self.state == HALF_OPEN and not self.trial

    def start_trial(self, now: float) -> None:
        self.trial = True
        self.until = now + self.open_timeout
