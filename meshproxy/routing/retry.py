"""Retry policy: which failures are retried, how long to wait, and how many
retries the mesh can afford at once.

Pure arithmetic over values the caller passes in (counters, the retry number,
a random float): no clock, no I/O.  The proxy owns the timers and decides when
an outcome is known; it asks ``should_retry`` and, when the answer is yes,
``RetryBudget.try_start_retry`` before it sleeps ``backoff(...)`` and tries
again.  Replaying a request body that was streamed and not kept is also the
proxy's business: ``should_retry`` only says whether the policy allows it.
"""

from __future__ import annotations

from typing import Final, Literal

from meshproxy.config.routes import Retries

CONNECT_FAILURE: Final = "connect-failure"  # no connection: nothing reached the upstream
RESET: Final = "reset"  # the connection broke before a response head arrived
Outcome = int | Literal["connect-failure", "reset"]  # an int is a response status

# RFC 9110 section 9.2.2.
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
GATEWAY_ERRORS = frozenset({502, 503, 504})


class RetryPolicy:
    """A rule's ``retries``, compiled: flags instead of a list of names."""

    __slots__ = (
        "attempts",
        "backoff_base",
        "backoff_max",
        "on_5xx",
        "on_connect_failure",
        "on_gateway_error",
        "on_reset",
        "per_try_timeout",
        "retry_non_idempotent",
        "status_codes",
    )

    def __init__(self, spec: Retries) -> None:
        self.attempts = spec.attempts
        self.per_try_timeout = spec.per_try_timeout
        self.on_connect_failure = "connect-failure" in spec.retry_on
        self.on_reset = "reset" in spec.retry_on
        self.on_5xx = "5xx" in spec.retry_on
        self.on_gateway_error = "gateway-error" in spec.retry_on
        self.status_codes = frozenset(spec.retriable_status_codes)
        self.backoff_base = spec.backoff.base
        self.backoff_max = (
            spec.backoff.max if spec.backoff.max is not None else 10 * spec.backoff.base
        )
        self.retry_non_idempotent = spec.retry_non_idempotent

    def retriable(self, outcome: Outcome) -> bool:
        """Whether ``retry_on`` covers this outcome, whatever the request."""
        if outcome == CONNECT_FAILURE:
            return self.on_connect_failure
        if outcome == RESET:
            return self.on_reset
        if isinstance(outcome, int):
            return (
                (self.on_5xx and 500 <= outcome <= 599)
                or (self.on_gateway_error and outcome in GATEWAY_ERRORS)
                or outcome in self.status_codes
            )
        return False


def should_retry(
    policy: RetryPolicy | None,
    outcome: Outcome,
    *,
    retries_done: int,
    method: bytes,
    request_sent: bool,
) -> bool:
    """Whether a try that ended with ``outcome`` may be tried again.

    ``request_sent`` says whether any byte of the request may have reached the
    upstream.  A response status implies it did; a connect failure implies it
    did not.  Once it may have, only an idempotent method is retried unless the
    rule sets ``retry_non_idempotent``: a POST must not be applied twice
    because its answer was lost.
    """
    if policy is None or retries_done >= policy.attempts or not policy.retriable(outcome):
        return False
    if outcome == CONNECT_FAILURE:
        return True
    reached = request_sent or isinstance(outcome, int)
    return not reached or method in IDEMPOTENT_METHODS or policy.retry_non_idempotent


def backoff(retry: int, base: float, maximum: float, rand: float) -> float:
    """Seconds to wait before retry number ``retry`` (1 for the first).

    Envoy's full jitter: uniform in [0, (2**retry - 1) * base), capped at
    ``maximum``; ``rand`` is in [0, 1).
    """
    if retry < 1:
        return 0.0
    ceiling = min(((1 << min(retry, 32)) - 1) * base, maximum)
    return rand * ceiling


def try_timeout(
    route_timeout: float | None, per_try_timeout: float | None, elapsed: float
) -> float | None:
    """How long the next try may take: its own limit, cut to what is left of
    the route's (which covers every try and backoff).  ``0.0`` means the route
    is out of time; ``None`` means no limit."""
    if route_timeout is None:
        return per_try_timeout
    left = max(route_timeout - elapsed, 0.0)
    return left if per_try_timeout is None else min(per_try_timeout, left)


class RetryBudget:
    """Concurrent retries bounded by a share of the active requests (Envoy's
    retry budget): a retry may start while ``active_retries`` is below
    ``max(min_concurrency, percent% of active_requests)``.  Keeps an outage
    from being multiplied by the retries it causes.

    ``active_requests`` counts requests in flight, retries included.
    """

    __slots__ = ("active_requests", "active_retries", "min_concurrency", "percent")

    def __init__(self, percent: int = 20, min_concurrency: int = 3) -> None:
        if not 0 <= percent <= 100 or min_concurrency < 0:
            raise ValueError("percent is in [0, 100] and min_concurrency >= 0")
        self.percent = percent
        self.min_concurrency = min_concurrency
        self.active_requests = 0
        self.active_retries = 0

    def limit(self) -> int:
        """The most retries allowed at once right now."""
        share = -(-self.active_requests * self.percent // 100)  # ceil: retries < 0.2*active
        return max(self.min_concurrency, share)

    def allows_retry(self) -> bool:
        return self.active_retries < self.limit()

    def request_started(self) -> None:
        self.active_requests += 1

    def request_finished(self) -> None:
        if self.active_requests > 0:
            self.active_requests -= 1

    def try_start_retry(self) -> bool:
        """Take a retry slot if the budget allows it; pair with ``retry_finished``."""
        if not self.allows_retry():
            return False
        self.active_retries += 1
        return True

    def retry_finished(self) -> None:
        if self.active_retries > 0:
            self.active_retries -= 1
