"""The policy filter chain on the data path: the glue between ``server`` /
``upstream`` and ``meshproxy.policy`` (whose ``chain`` docstring is the contract).

How it works.  A listener with a non-empty chain has a ``ListenerPolicy`` in
``ListenerContext.policy``; without one the data path pays a single ``None``
check.  For each request ``run_request_phase`` builds the ``RequestContext``
and runs the request phase: a ``LocalReply`` is written at once and ends the
exchange (flag ``RL`` for a rate limit's refusal, ``UAEX`` for a 401/403 of
authentication or authz, ``LR`` otherwise); ``None`` goes on to the route
(``HttpServer.route_request``), with the headers filters added appended to
the forwarded head; a ``Pending`` parks the connection in ``WAIT`` (bytes that
arrive meanwhile wait in the buffer, as pipelined requests do) while ONE task
finishes the phase, then answers or routes as above and resumes reading heads.
The response phase (``response_phase``) runs where the upstream's head is
parsed, only when the chain has response hooks or a filter added response
headers; an asynchronous response phase holds the response (the upstream's
reading paused) until it completes.

Paths.  Authz matches the normalised path (``policy.authz.normalize_path``:
dot segments removed, ``//`` merged, ``%2e`` decoded), so on a listener with a
chain the path forwarded upstream is that same normalised path (the query
kept): what was checked is what the application receives, as Envoy's
``normalize_path`` + ``merge_slashes`` do.  Encoded slashes and backslashes
(``%2F``, ``%5C``) cannot be normalised without changing what the path means
to the application, so such requests are refused with 400, as Envoy's
``path_with_escaped_slashes_action: REJECT_REQUEST``.  Listeners without a
chain forward the path as received.

Which policies apply where: a service's rate limits and access policies are
enforced by that service's own sidecar, on its inbound listener (Istio's and
Consul's server-side model): the caller's sidecar cannot be trusted to apply
them and would count limits once per caller.  Outbound listeners run only the
user filters configured for the outbound direction.

It must not parse or route, nor decide anything a filter decides.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from meshproxy import fastpath as fp
from meshproxy.http1 import forward  # a module: ``upstream`` imports this one first
from meshproxy.http1.head import status_line
from meshproxy.http1.replies import local_reply, reason_phrase
from meshproxy.observe.exchange import (
    BAD_REQUEST,
    LOCAL_REPLY,
    RATE_LIMITED,
    UNAUTHORIZED,
    Exchange,
)
from meshproxy.policy import FilterChain, LocalReply, RequestContext
from meshproxy.policy.authz import normalize_path, plain_path
from meshproxy.policy.chain import NOT_STOPPED
from meshproxy.policy.reply import FILTER_ERROR

if TYPE_CHECKING:
    from meshproxy.http1.server import HttpServer

RATE_LIMIT_FILTERS = frozenset({"ratelimit", "ratelimit_global"})
AUTH_FILTERS = frozenset({"jwt", "authz"})
# Escapes that would turn into a path separator at the application.
_ESCAPED_SEPARATORS = (b"%2f", b"%2F", b"%5c", b"%5C")

RateLimitRecorder = Callable[[str, bool], None]
_new_context = object.__new__


class ListenerPolicy:
    """One listener's chain for one snapshot, with what the data path needs
    to know about it precomputed.  ``service``: the service whose policies
    apply (inbound: the node's own), the destination of refused exchanges in
    the metrics; ``route``: the route name filters see (``inbound`` on a
    listener to the local app, else unknown before routing)."""

    __slots__ = ("auth", "chain", "has_response_phase", "limits", "record", "route", "service")

    def __init__(
        self,
        chain: FilterChain,
        service: str = "",
        route: str | None = None,
        record: RateLimitRecorder | None = None,
    ) -> None:
        self.chain = chain
        self.service = service
        self.route = route
        names = chain.names
        # Positions in the chain, to tell who answered from ``ctx.ran``.
        self.limits = frozenset(i for i, name in enumerate(names) if name in RATE_LIMIT_FILTERS)
        self.auth = frozenset(i for i, name in enumerate(names) if name in AUTH_FILTERS)
        self.record = record if self.limits else None
        self.has_response_phase = chain.has_response_phase

    def flag_for(self, reply: LocalReply, ran: int) -> str:
        if ran in self.limits and reply.status == 429:
            return RATE_LIMITED
        if ran in self.auth and reply.status in (401, 403):
            return UNAUTHORIZED
        return LOCAL_REPLY

    def decided(self, rc: RequestContext, reply: LocalReply | None) -> None:
        """Count the rate-limit decision of one request (when a limit is configured)."""
        record = self.record
        if record is not None:
            record(self.service, reply is None or rc.ran not in self.limits)

    async def aclose(self) -> None:
        await self.chain.aclose()


def forwarded_path(path: bytes) -> bytes | None:
    """The path to check and forward (see the module docstring); None: refuse it."""
    if plain_path(path):
        return path  # the common case: nothing to normalise
    only, mark, query = path.partition(b"?")
    if 0x25 in only and any(sep in only for sep in _ESCAPED_SEPARATORS):
        return None
    normal = normalize_path(only)
    return normal + mark + query if normal != only else path


def run_request_phase(
    server: HttpServer,
    policy: ListenerPolicy,
    head: fp.RequestHead,
    raw: bytes,
    ex: Exchange,
    path: bytes,
    authority: bytes | None,
    host: bytes | None,
    rid: bytes,
    now: float,
) -> None:
    """Run the request phase for a parsed head; answer, route, or wait for it."""
    # The usual path has nothing to normalise: tested inline, no call (no
    # ``b"%" in path`` either: see ``policy.authz.plain_path``).
    checked = (
        path
        if 0x25 not in path and 0x2E not in path and not path.partition(b"//")[1]
        else forwarded_path(path)
    )
    if checked is None:
        ex.add_flag(BAD_REQUEST)
        server.ctx.observer.exchange_started(ex, head.headers)
        close = closes(server, head)
        data = local_reply(400, "escaped separator in path", close, head.method == b"HEAD")
        server.local_answer_bytes(ex, 400, data, close)
        return
    # ``RequestContext(...)`` field by field: a class call runs ``__init__`` in
    # a nested interpreter (about a third of the cost).  The same fields and
    # defaults as ``RequestContext.__init__`` (a unit test compares them).
    rc = _new_context(RequestContext)
    rc.method = head.method
    rc.path = checked
    rc.raw_headers = head.headers
    rc.client_ip = server.client_addr
    rc.client_port = server.peer[1]
    rc.now = now
    rc.authority = host
    rc.service = policy.service
    rc.route = policy.route
    rc.peer = server.principal
    rc.claims = None
    rc.target = None
    rc.scratch_dict = None
    rc._headers = None
    rc.request_extra = None
    rc.response_extra = None
    rc.status = 0
    rc.response_headers = []
    rc.response_edited = False
    rc.ran = NOT_STOPPED
    result = policy.chain.on_request(rc)
    if result is None:
        record = policy.record
        if record is not None:
            record(policy.service, True)
        server.policy = policy
        server.route_request(head, raw, ex, checked, authority, host, rid, now, rc)
        return
    if isinstance(result, LocalReply):
        policy.decided(rc, result)
        answer(server, policy, head, ex, result, rc)
        return
    # A filter went asynchronous: hold the request (its body and anything
    # pipelined wait in the buffer) and finish the phase in one task.
    server.state = forward.WAIT
    task = server.ctx.loop.create_task(result.run())
    server.policy_task = task
    task.add_done_callback(
        functools.partial(
            _request_resumed, server, policy, head, raw, ex, checked, authority, host, rid, rc
        )
    )


def _request_resumed(
    server: HttpServer,
    policy: ListenerPolicy,
    head: fp.RequestHead,
    raw: bytes,
    ex: Exchange,
    path: bytes,
    authority: bytes | None,
    host: bytes | None,
    rid: bytes,
    rc: RequestContext,
    task: asyncio.Task[LocalReply | None],
) -> None:
    if server.policy_task is task:
        server.policy_task = None
    if task.cancelled() or server.state == forward.CLOSED:
        return
    exc = task.exception()
    reply = FILTER_ERROR if exc is not None else task.result()
    half_closed = server.close_after  # the client may have sent EOF meanwhile
    server.state = forward.IDLE
    if server.paused_buffer:
        server.paused_buffer = False
        server.update_reading()
    policy.decided(rc, reply)
    server.dispatching = True  # as in read_heads: we go on with the buffer below
    try:
        if reply is not None:
            answer(server, policy, head, ex, reply, rc)
        else:
            now = server.ctx.loop.time()
            server.policy = policy
            server.route_request(head, raw, ex, path, authority, host, rid, now, rc)
            if half_closed:
                server.close_after = True
    finally:
        server.dispatching = False
    if server.state == forward.IDLE:
        if server.buf:
            server.read_heads(server.buf)
        else:
            server.arm_idle(server.ctx.loop.time())


def answer(
    server: HttpServer,
    policy: ListenerPolicy,
    head: fp.RequestHead,
    ex: Exchange,
    reply: LocalReply,
    rc: RequestContext,
) -> None:
    """Write a filter's local reply (its headers and the filters' response
    headers in the head); the exchange ends here."""
    ctx = server.ctx
    ex.add_flag(policy.flag_for(reply, rc.ran))
    if policy.service:
        ex.destination_service = policy.service
    ctx.observer.exchange_started(ex, head.headers)
    close = closes(server, head)
    data = local_reply(reply.status, reply.reason, close, head.method == b"HEAD")
    extra = reply.header_block
    if rc.response_extra:
        extra += b"".join(b"%s: %s\r\n" % pair for pair in rc.response_extra)
    if extra:
        cut = data.index(b"\r\n") + 2
        data = data[:cut] + extra + data[cut:]
    server.local_answer_bytes(ex, reply.status, data, close)


def closes(server: HttpServer, head: fp.RequestHead) -> bool:
    """Whether a local answer ends the connection: an unread body cannot be
    skipped safely, and the client or a drain may ask for it."""
    return head.body != fp.BODY_NONE or not head.keep_alive or server.ctx.draining


# -- response phase ------------------------------------------------------------


def response_headers(
    rc: RequestContext,
    chain: FilterChain,
    status: int,
    headers: list[tuple[bytes, bytes]],
    on_hold: Callable[[asyncio.Task[LocalReply | None]], None],
) -> list[tuple[bytes, bytes]] | None:
    """Run the response phase over ``headers`` (the upstream's, after the
    route's edits).  The headers to send, or None when the phase went
    asynchronous: ``on_hold`` then receives the task that finishes it, after
    which ``finished_headers`` gives them."""
    rc.status = status
    rc.response_headers = list(headers)
    if chain.has_response_phase:
        later = chain.on_response(rc)
        if later is not None:
            on_hold(asyncio.get_running_loop().create_task(later.run()))
            return None
    return finished_headers(rc)


def finished_headers(rc: RequestContext) -> list[tuple[bytes, bytes]]:
    extra = rc.response_extra
    return rc.response_headers + extra if extra else rc.response_headers


def with_status(out: bytes | bytearray, status: int) -> bytes:
    """A built response head with its status line replaced (a filter changed it)."""
    cut = out.index(b"\r\n") + 2
    return status_line(status, reason_phrase(status)) + bytes(out[cut:])
