"""Forwarding one exchange upstream: endpoint choice, connection, timeouts,
retries, fault delays and the outcome each try reports.

``Forwarder`` is the base of ``HttpServer``: it holds the per-exchange state
of the upstream side, while ``server`` keeps the client side (parsing, body
relay, keep-alive).  A *try* is one endpoint chosen by the route's cluster
(``start_try``), a pooled or new connection, the request written, and its
end (``end_try``): the outcome (a status, or a ``Failure``) goes to outlier
detection and the endpoint breaker, the active-request counters and the
circuit breakers are released.  Every try ends exactly once.

Timers (``call_later``, no task): one request timer, re-armed lazily, whose
deadline is the earlier of the route's (the rule's ``timeout`` over every try
and backoff, else the listener's response timeout) and the try's
(``per_try_timeout``); one ``wait_timer`` for a fault delay or a retry backoff.

Retries (``take_retry``): only while no response byte went to the client,
only with the whole request at hand (``sent``: complete at dispatch, or a
streamed body of at most ``REPLAY_LIMIT`` bytes kept while it passed), as the
rule's policy allows (``should_retry``), within the retry budget and the
cluster's ``max_retries``; a retry prefers an endpoint not tried yet.

It must not parse requests or responses, nor decide routes (``resolve``).
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

from meshproxy.http1.connect import PendingConnect
from meshproxy.http1.context import ListenerContext
from meshproxy.http1.mirror import send_mirror
from meshproxy.http1.replies import CONTINUE, local_reply
from meshproxy.http1.upstream import UpstreamConnection
from meshproxy.observe.exchange import (
    FAULT_ABORT,
    FAULT_DELAY,
    NO_HEALTHY_UPSTREAM,
    UPSTREAM_CONNECT_FAILURE,
    UPSTREAM_OVERFLOW,
    UPSTREAM_RESET,
    UPSTREAM_RETRY_LIMIT,
    UPSTREAM_TIMEOUT,
    Exchange,
)
from meshproxy.routing import (
    CONNECT_FAILURE,
    RESET,
    backoff,
    fault_for,
    mirror_for,
    should_retry,
)
from meshproxy.routing.actions import HeaderEdit
from meshproxy.routing.retry import Outcome, RetryPolicy
from meshproxy.upstream import EndpointState, Failure

if TYPE_CHECKING:
    from meshproxy.resolve import Route
    from meshproxy.security.spiffe import SpiffeId

# Connection states (shared with ``server``).
IDLE = 0  # waiting for (the rest of) a request head
BODY = 1  # request head sent upstream, body still streaming from the client
WAIT = 2  # request complete, response in progress
TUNNEL = 3  # after a 101: raw bytes both ways
CLOSED = 4

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
# Bytes of a streamed request body kept for a retry; a longer body is not retried.
REPLAY_LIMIT = 65536
# Pipelined or early body bytes buffered before we stop reading the client.
HIGH_WATER = 65536
_rand = random.random


class Forwarder(asyncio.Protocol):
    __slots__ = (
        "awaiting_head",
        "balance_key",
        "close_after",
        "connecting",
        "ctx",
        "endpoint",
        "exchange",
        "expect_continue",
        "head_sent",
        "method",
        "paused_upstream",
        "pending",
        "replay",
        "replay_size",
        "req_deadline",
        "req_timer",
        "request_done",
        "response_edit",
        "retried",
        "retries",
        "retry_policy",
        "retry_slot",
        "route",
        "route_deadline",
        "sent",
        "started",
        "started_fresh",
        "state",
        "status",
        "transport",
        "tried",
        "up",
        "wait_timer",
        "write_paused",
    )

    def __init__(self, ctx: ListenerContext) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self.state = IDLE
        self.up: UpstreamConnection | None = None
        self.route: Route | None = None
        self.endpoint: EndpointState | None = None
        self.exchange: Exchange | None = None
        self.method = b"GET"
        self.expect_continue = False
        self.close_after = False
        self.head_sent = False
        self.request_done = True
        self.pending: list[bytes] | None = None
        self.sent: bytes | None = None  # the whole request, kept for a retry
        self.replay: list[bytes] | None = None  # a streamed request, while it is short
        self.replay_size = 0
        self.retried = False  # the free retry after a reused connection broke
        self.retries = 0  # retries the route's policy granted
        self.retry_policy: RetryPolicy | None = None
        self.retry_slot = False  # this try holds a retry slot (budget, breaker)
        self.tried: list[EndpointState] | None = None
        self.balance_key: bytes | None = None  # for consistent-hash balancing
        self.response_edit: HeaderEdit | None = None
        self.status = 0
        self.started = 0.0
        self.started_fresh = False  # ``started`` is still "now" for the request timer
        self.awaiting_head = False
        self.req_deadline = 0.0
        self.route_deadline = 0.0  # 0.0: not armed yet
        self.connecting: PendingConnect | None = None
        self.req_timer: asyncio.TimerHandle | None = None
        self.wait_timer: asyncio.TimerHandle | None = None
        self.write_paused = False
        self.paused_upstream = False

    # -- tries ---------------------------------------------------------------

    def start_try(self, payload: bytes, now: float | None = None) -> None:
        """Choose an endpoint and send ``payload`` to it; ``now``: the loop's
        time when the caller has just read it."""
        route = self.route
        assert route is not None
        cluster = route.cluster
        ctx = self.ctx
        endpoint = cluster.pick(self.balance_key, ctx.loop.time() if now is None else now)
        tried = self.tried
        if tried is not None:
            if endpoint is not None and endpoint in tried:
                for _ in range(3):
                    other = cluster.pick(self.balance_key, ctx.loop.time())
                    if other is not None and other not in tried:
                        endpoint = other
                        break
            if endpoint is not None:
                tried.append(endpoint)
        ex = self.exchange
        assert ex is not None
        if endpoint is None:
            ex.add_flag(NO_HEALTHY_UPSTREAM)
            self.fail(503, "no healthy upstream")
            return
        overflow = cluster.breakers.try_request()
        if overflow is not None:
            ex.add_flag(UPSTREAM_OVERFLOW)
            self.fail(overflow.status, overflow.reason)
            return
        cluster.request_started(endpoint)
        self.endpoint = endpoint
        ex.upstream_host = endpoint.name
        mtls = ctx.mtls
        key = (
            endpoint.address,
            endpoint.port,
            mtls.expected.get(route.service) if mtls is not None else None,
        )
        if self.expect_continue and key in ctx.http10_endpoints:
            # An HTTP/1.0 upstream never sends 100: we answer it ourselves.
            assert self.transport is not None
            self.transport.write(CONTINUE)
            self.expect_continue = False
        up = ctx.pool.take(key)
        if up is not None:
            self.attach(up, payload)
        else:
            self.connect(payload, key[2])

    def end_try(self, outcome: int | Failure | None) -> None:
        """The current try is over: report ``outcome`` (None: no verdict on
        the endpoint, e.g. the client left) and release what it held."""
        route = self.route
        if self.retry_slot:
            self.retry_slot = False
            if route is not None:
                route.cluster.breakers.release_retry()
                route.budget.retry_finished()
        endpoint = self.endpoint
        if endpoint is None or route is None:
            return
        self.endpoint = None
        cluster = route.cluster
        if outcome is not None and (
            type(outcome) is not int
            or outcome >= 500
            or endpoint.consecutive_5xx
            or endpoint.consecutive_gateway
            or endpoint.breaker is not None
        ):
            # A success on an endpoint with clean counters and no breaker
            # changes nothing: the common case skips the call.
            cluster.on_result(endpoint, outcome, self.ctx.loop.time())
        cluster.request_finished(endpoint)
        cluster.breakers.release_request()

    def take_retry(self, outcome: Outcome) -> bool:
        """After ``end_try``: schedule another try when the policy, the body
        at hand, the time left, the budget and the breaker allow it."""
        policy = self.retry_policy
        if policy is None or self.sent is None or self.head_sent or self.state == CLOSED:
            return False
        ex = self.exchange
        route = self.route
        assert ex is not None and route is not None
        if not should_retry(
            policy,
            outcome,
            retries_done=self.retries,
            method=self.method,
            request_sent=outcome != CONNECT_FAILURE,
        ):
            if self.retries and policy.retriable(outcome):
                ex.add_flag(UPSTREAM_RETRY_LIMIT)
            return False
        loop = self.ctx.loop
        if self.route_deadline and loop.time() >= self.route_deadline - 0.001:
            return False
        breakers = route.cluster.breakers
        budget = route.budget
        # The budget is a share of what is in flight on the cluster right now.
        budget.active_requests = breakers.requests
        if not budget.try_start_retry():
            ex.add_flag(UPSTREAM_RETRY_LIMIT)
            return False
        if breakers.try_retry() is not None:
            budget.retry_finished()
            ex.add_flag(UPSTREAM_OVERFLOW)
            return False
        self.retry_slot = True
        self.retries += 1
        delay = backoff(self.retries, policy.backoff_base, policy.backoff_max, _rand())
        if self.route_deadline:
            self.awaiting_head = True  # the route's deadline runs through the backoff
            self.req_deadline = self.route_deadline
            self.ensure_timer(self.route_deadline)
        self.wait_timer = loop.call_later(delay, self.retry_now)
        return True

    def retry_now(self) -> None:
        self.wait_timer = None
        if self.state == CLOSED or self.sent is None:
            return
        self.start_try(self.sent)

    def start_ruled(
        self, route: Route, payload: bytes, method: bytes, mirrored: bytes | None
    ) -> None:
        """Start the first try of a rule's request after its fault (abort or
        delay) and its mirror (``mirrored``: the whole request as the mirror
        gets it, or None when it cannot be copied)."""
        ex = self.exchange
        assert ex is not None
        delay = 0.0
        if route.fault is not None:
            action = fault_for(route.fault, _rand(), _rand())
            if action.abort is not None:
                ex.add_flag(FAULT_ABORT)
                self.fail(action.abort, "fault filter abort")
                return
            delay = action.delay
        if (
            mirrored is not None
            and route.mirror_cluster is not None
            and mirror_for(route.mirror, _rand()) is not None
        ):
            ctx = self.ctx
            timeout = route.timeout if route.timeout is not None else ctx.request_timeout
            send_mirror(ctx, route.mirror_cluster, mirrored, method, timeout)
        if delay:
            ex.add_flag(FAULT_DELAY)
            self.pending = [payload]  # the body that arrives meanwhile joins it
            self.wait_timer = self.ctx.loop.call_later(delay, self.delay_over)
            return
        self.start_try(payload)

    def delay_over(self) -> None:
        """A fault delay has passed: forward what was held meanwhile."""
        self.wait_timer = None
        if self.state == CLOSED:
            return
        payload = b"".join(self.pending or ())
        self.pending = None
        self.start_try(payload)

    def retry_on_status(self, status: int) -> bool:
        """Called with a response head's status when the route retries: True
        when the try is retried (the caller closes the connection and relays
        nothing)."""
        policy = self.retry_policy
        assert policy is not None
        if status < 500 and status not in policy.status_codes:
            return False
        if not policy.retriable(status) or self.sent is None:
            return False
        self.up = None
        self.awaiting_head = False
        self.end_try(status)
        if self.take_retry(status):
            return True
        self.awaiting_head = True
        return False

    # -- upstream connection -------------------------------------------------

    def connect(self, payload: bytes, expected: SpiffeId | None = None) -> None:
        route = self.route
        endpoint = self.endpoint
        assert route is not None and endpoint is not None
        breakers = route.cluster.breakers
        overflow = breakers.try_connection()
        if overflow is None:
            overflow = breakers.try_pending()
            if overflow is not None:
                breakers.release_connection()
        if overflow is not None:
            self.end_try(None)
            assert self.exchange is not None
            self.exchange.add_flag(UPSTREAM_OVERFLOW)
            self.fail(overflow.status, overflow.reason)
            return
        self.pending = [payload]
        self.connecting = PendingConnect(
            self.ctx, endpoint.address, endpoint.port, self.connected, expected
        )

    def drop_connecting(self) -> None:
        """Give up a connection being opened (its breaker counts go back)."""
        connecting = self.connecting
        if connecting is not None:
            self.connecting = None
            connecting.cancel()
            route = self.route
            if route is not None:
                route.cluster.breakers.release_pending()
                route.cluster.breakers.release_connection()

    def connected(self, up: UpstreamConnection | None, failure: str) -> None:
        self.connecting = None
        route = self.route
        assert route is not None
        cluster = route.cluster
        cluster.breakers.release_pending()
        if up is None:
            cluster.breakers.release_connection()
            self.end_try(Failure.CONNECT)
            if self.take_retry(CONNECT_FAILURE):
                return
            assert self.exchange is not None
            self.exchange.add_flag(UPSTREAM_CONNECT_FAILURE)
            self.fail(503, failure)
            return
        endpoint = self.endpoint
        if endpoint is not None:
            # From here the connection releases its own counts when it closes.
            up.cluster = cluster
            up.endpoint = endpoint
            cluster.connection_opened(endpoint)
        else:
            cluster.breakers.release_connection()
        pending = self.pending or []
        self.pending = None
        self.attach(up, b"".join(pending))

    def attach(self, up: UpstreamConnection, payload: bytes) -> None:
        self.up = up
        up.start(self, self.method, payload)  # type: ignore[arg-type]
        if self.paused_upstream:
            self.paused_upstream = False
            self.update_reading()
        if self.request_done:
            self.arm_request_timer()

    def arm_request_timer(self) -> None:
        """Start waiting for the response head.  The timer is re-armed lazily:
        most requests finish long before it fires, and then it only moves on."""
        loop = self.ctx.loop
        now = self.started if self.started_fresh else loop.time()
        self.started_fresh = False
        deadline = self.route_deadline
        if not deadline:
            route = self.route
            timeout = route.timeout if route is not None else None
            deadline = self.route_deadline = now + (
                timeout if timeout is not None else self.ctx.request_timeout
            )
        policy = self.retry_policy
        if policy is not None and policy.per_try_timeout is not None:
            deadline = min(deadline, now + policy.per_try_timeout)
        self.req_deadline = deadline
        self.awaiting_head = True
        self.ensure_timer(deadline)

    def ensure_timer(self, deadline: float) -> None:
        loop = self.ctx.loop
        timer = self.req_timer
        if timer is None:
            self.req_timer = loop.call_at(deadline, self.request_timer_fired)
        elif timer.when() > deadline:
            timer.cancel()
            self.req_timer = loop.call_at(deadline, self.request_timer_fired)

    def request_timer_fired(self) -> None:
        self.req_timer = None
        if not self.awaiting_head:
            return
        loop = self.ctx.loop
        if self.req_deadline - loop.time() > 0.001:
            self.req_timer = loop.call_at(self.req_deadline, self.request_timer_fired)
            return
        self.request_timeout()

    def request_timeout(self) -> None:
        self.awaiting_head = False
        per_try = self.ctx.loop.time() < self.route_deadline - 0.001
        up = self.up
        self.up = None
        if up is not None:
            up.abort()
        self.drop_connecting()
        if self.wait_timer is not None:
            self.wait_timer.cancel()
            self.wait_timer = None
        self.end_try(Failure.TIMEOUT)
        if per_try and self.take_retry(504):
            return
        assert self.exchange is not None
        self.exchange.add_flag(UPSTREAM_TIMEOUT)
        self.fail(504, "upstream per-try timeout" if per_try else "upstream response timeout")

    # -- called by the upstream connection -----------------------------------

    def expects_continue(self) -> bool:
        expect = self.expect_continue
        self.expect_continue = False
        return expect

    def upstream_failed(self, up: UpstreamConnection, retryable: bool) -> None:
        """``up`` closed before any response byte."""
        if self.up is up:
            self.up = None
        if retryable and self.sent is not None and not self.retried and self.method in IDEMPOTENT:
            # A reused connection the upstream had closed: once more, same endpoint.
            self.retried = True
            self.awaiting_head = False
            self.connect(self.sent, up.key[2])
            return
        self.awaiting_head = False
        self.end_try(Failure.RESET)
        if self.take_retry(RESET):
            return
        assert self.exchange is not None
        self.exchange.add_flag(UPSTREAM_RESET)
        self.fail(502, "upstream reset before response")

    def upstream_bad_response(self) -> None:
        self.up = None
        self.end_try(Failure.RESET)
        if self.head_sent:
            self.abort_exchange()
        else:
            self.fail(502, "bad upstream response")

    def abort_exchange(self) -> None:
        """The exchange broke after the response began: the client can only
        learn it from the connection closing."""
        self.up = None
        self.end_try(Failure.RESET)
        self.status = self.status or 502
        if self.exchange is not None:
            self.exchange.add_flag(UPSTREAM_RESET)
        self.response_done(close=True)

    def pause_for_upstream(self) -> None:
        self.paused_upstream = True
        self.update_reading()

    def resume_for_upstream(self) -> None:
        self.paused_upstream = False
        self.update_reading()

    # -- endings (the client side completes them) ------------------------------

    def fail(self, status: int, reason: str) -> None:
        """Answer the current exchange locally (no response byte sent yet)."""
        if self.state == CLOSED:
            return
        self.awaiting_head = False
        up = self.up
        self.up = None
        if up is not None:
            up.close()
        self.drop_connecting()
        if self.wait_timer is not None:
            self.wait_timer.cancel()
            self.wait_timer = None
        self.end_try(None)
        if self.head_sent:
            self.abort_exchange()
            return
        if not self.request_done:
            self.close_after = True
        self.status = status
        assert self.transport is not None
        close = self.close_after or self.ctx.draining
        self.transport.write(local_reply(status, reason, close, self.method == b"HEAD"))
        self.response_done(close=False)

    def finish_exchange(self, now: float) -> None:
        """Hand the exchange to the observer, once."""
        self.end_try(self.status or None)
        ex = self.exchange
        if ex is None:
            return
        self.exchange = None
        ex.status = self.status
        ex.duration = now - self.started
        self.ctx.observer.exchange_done(ex)

    def response_done(self, close: bool) -> None:
        raise NotImplementedError

    def update_reading(self) -> None:
        raise NotImplementedError
