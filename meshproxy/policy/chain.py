"""The filter chain: filters run in order on a request and in reverse on its response.

This is the contract between the policy room and the data path (``http1``).

**Building.**  ``compile_chain`` (``policy.build``) turns a snapshot into one
``FilterChain`` per HTTP listener (inbound: the node's service; outbound:
None); it raises ``ConfigError`` when a filter cannot be built, which refuses
the snapshot.  Rebuild on every accepted snapshot and swap it between
requests like the resolver; ``await old.aclose()`` after the swap (it closes
Redis clients and the like).  ``chain.names`` empty: skip the chain entirely.
The order is rate limit -> authentication (``jwt``) -> authz -> user
filters -> ``tail`` (route and load-balance filters, if the data path passes
them as filters rather than resolving after the chain).

**The context.**  One ``RequestContext`` per request (``__slots__``, no dict
unless a filter asks).  The data path fills, before ``on_request``:

* ``method``, ``path`` (the origin-form target, query included), ``authority``
  (absolute-form authority or Host, or None) — bytes as parsed;
* ``raw_headers``: the parsed ``(name, value)`` byte pairs, names in original
  case.  ``ctx.header(b"x-user")`` scans them (no dict); ``ctx.headers`` builds
  a lower-case-name dict once, on first use (repeated names joined by ``, ``);
* ``client_ip`` (str), ``client_port``; ``peer`` (the mTLS principal, or None:
  filters may set it from a trusted header); ``service`` (the service whose
  policy applies: the local one on inbound, the target on outbound once known);
  ``route`` (route name when known); ``now`` (the loop's monotonic time).

Filters read those and may set: ``claims`` (a verified JWT's payload),
``target`` (route/load-balance filters), ``scratch`` (a dict made on first
use, private per request), request headers with ``add_request_header`` (the
data path appends ``ctx.request_extra`` to the head it forwards; the parsed
list itself is never mutated) and response headers with
``add_response_header`` (``ctx.response_extra``, appended to whatever
response the client gets, upstream or local).

**The request phase.**  ``result = chain.on_request(ctx)``:

* ``None``: continue — forward the request (to ``ctx.target`` when a filter set
  one, else wherever the data path's own resolver says);
* a ``LocalReply``: answer it (``status``, ``reason`` as text body,
  ``header_block`` preformatted header lines to insert in the head; plus
  ``ctx.response_extra``) and do not forward;
* a ``Pending``: a filter went asynchronous.  Run ``await pending`` (or
  ``loop.create_task(pending.run())``) — ONE task for the rest of the request
  phase — and treat its result (None or LocalReply) as above.  Hold the
  request body meanwhile (buffer it, pause reading over the high-water mark).
  If the client goes away first, cancel the task, or ``pending.close()`` one
  never started.  Only filters that return an awaitable take this path:
  built-ins answered from memory never do.

A hook returning ``STOP`` ends the request phase there: the filters after it
do not run and the request goes on as with ``None``.  A hook that raises
(sync or async) answers ``500 filter error`` — or continues when its entry is
configured ``on_error: allow`` — and is counted in ``chain.counters``; it never
propagates to the data path.

**The response phase.**  Only when ``chain.has_response_phase``: before
writing the response head, set ``ctx.status`` and ``ctx.response_headers``
(the upstream's byte pairs, or a local reply's) and call
``chain.on_response(ctx)`` — None or a ``Pending`` to await, as above.  Hooks
run in reverse order, only for filters whose request hook continued.  They may
change ``ctx.status`` and edit headers through ``set_response_header`` /
``remove_response_header`` / ``add_response_header``; the body passes
untouched.  Rebuild the head when ``ctx.response_edited`` is true or the
status changed; append ``ctx.response_extra`` in every case.

It must not do I/O itself, read clocks, or know about sockets.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import Any

from meshproxy.policy.counters import Counters
from meshproxy.policy.reply import FILTER_ERROR, LocalReply

log = logging.getLogger("meshproxy.policy")


class _Stop:
    __slots__ = ()

    def __repr__(self) -> str:
        return "STOP"


STOP = _Stop()

# ``RequestContext.ran`` of a request phase that ran every filter.
NOT_STOPPED = 1 << 30

HookResult = None | LocalReply | _Stop | Awaitable[Any]
Hook = Callable[["RequestContext"], Any]


class RequestContext:
    """What filters see of one request (see the module docstring)."""

    __slots__ = (
        "_headers",
        "authority",
        "claims",
        "client_ip",
        "client_port",
        "method",
        "now",
        "path",
        "peer",
        "ran",
        "raw_headers",
        "request_extra",
        "response_edited",
        "response_extra",
        "response_headers",
        "route",
        "scratch_dict",
        "service",
        "status",
        "target",
    )

    def __init__(
        self,
        method: bytes,
        path: bytes,
        raw_headers: list[tuple[bytes, bytes]],
        client_ip: str = "",
        client_port: int = 0,
        now: float = 0.0,
        authority: bytes | None = None,
        service: str = "",
        route: str | None = None,
        peer: str | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.raw_headers = raw_headers
        self.client_ip = client_ip
        self.client_port = client_port
        self.now = now
        self.authority = authority
        self.service = service
        self.route = route
        self.peer = peer
        self.claims: dict[str, Any] | None = None
        self.target: object | None = None
        self.scratch_dict: dict[str, Any] | None = None
        self._headers: dict[bytes, bytes] | None = None
        self.request_extra: list[tuple[bytes, bytes]] | None = None
        self.response_extra: list[tuple[bytes, bytes]] | None = None
        self.status = 0
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.response_edited = False
        # How many chain entries took part in the request phase (all, unless it
        # ended early); the response phase runs for those only.
        self.ran = NOT_STOPPED

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), without building a dict."""
        if self._headers is not None:
            return self._headers.get(name)
        for key, value in self.raw_headers:
            # Names the client sent in lower case match without a ``lower()``.
            if len(key) == len(name) and (key == name or key.lower() == name):
                return value
        return None

    @property
    def headers(self) -> dict[bytes, bytes]:
        """Lower-case names -> values (repeated names joined by ``, ``); built once."""
        headers = self._headers
        if headers is None:
            headers = {}
            for key, value in self.raw_headers:
                name = key.lower()
                seen = headers.get(name)
                headers[name] = value if seen is None else seen + b", " + value
            self._headers = headers
        return headers

    @property
    def path_only(self) -> bytes:
        """The path without its query string."""
        return self.path.partition(b"?")[0]

    @property
    def scratch(self) -> dict[str, Any]:
        """Per-request storage for filters (made on first use)."""
        if self.scratch_dict is None:
            self.scratch_dict = {}
        return self.scratch_dict

    def add_request_header(self, name: bytes, value: bytes) -> None:
        """Add a header to the request sent upstream (later filters see it too)."""
        if self.request_extra is None:
            self.request_extra = []
        self.request_extra.append((name, value))
        self.raw_headers = [*self.raw_headers, (name, value)]
        self._headers = None

    def add_response_header(self, name: bytes, value: bytes) -> None:
        if self.response_extra is None:
            self.response_extra = []
        self.response_extra.append((name, value))

    def set_response_header(self, name: bytes, value: bytes) -> None:
        """Response phase: replace every ``name`` header of the response by one."""
        self.remove_response_header(name)
        self.response_headers.append((name, value))
        self.response_edited = True

    def remove_response_header(self, name: bytes) -> None:
        lower = name.lower()
        kept = [(k, v) for k, v in self.response_headers if k.lower() != lower]
        if len(kept) != len(self.response_headers):
            self.response_headers[:] = kept
            self.response_edited = True


class ChainEntry:
    """One filter placed in a chain: its hooks and how to treat its failures."""

    __slots__ = ("fail_open", "filter", "name", "on_request", "on_response")

    def __init__(self, name: str, filt: object, fail_open: bool = False) -> None:
        self.name = name
        self.filter = filt
        self.fail_open = fail_open
        # Only hooks a filter defines are called: the others cost nothing.
        self.on_request: Hook | None = getattr(filt, "on_request", None)
        self.on_response: Hook | None = getattr(filt, "on_response", None)


class FilterChain:
    __slots__ = ("_entries", "_request", "_response", "counters", "has_response_phase")

    def __init__(self, entries: Sequence[ChainEntry], counters: Counters | None = None) -> None:
        self._entries = tuple(entries)
        self.counters = counters if counters is not None else Counters()
        # (position in the chain, hook) pairs, precomputed so the loop does no lookups.
        self._request = tuple(
            (i, e.on_request) for i, e in enumerate(self._entries) if e.on_request is not None
        )
        self._response = tuple(
            (i, e.on_response) for i, e in enumerate(self._entries) if e.on_response is not None
        )
        self.has_response_phase = bool(self._response)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self._entries]

    # -- request phase -------------------------------------------------------

    def on_request(self, ctx: RequestContext, _from: int = 0) -> LocalReply | Pending | None:
        """Run the request phase synchronously as far as it goes (see module doc);
        ``_from``: the index in the request hooks to start at (a resumption)."""
        for i, hook in self._request[_from:] if _from else self._request:
            try:
                result = hook(ctx)
            except Exception as exc:
                result = self._failed(i, exc)
            if result is None:
                continue
            if result.__class__ is LocalReply:
                ctx.ran = i
                return result
            return self._after(i, result, ctx)
        return None

    def _after(self, i: int, result: object, ctx: RequestContext) -> LocalReply | Pending | None:
        """The sync loop's rare answers: STOP, an awaitable, or a bad one."""
        k = next(k for k, (j, _) in enumerate(self._request) if j == i)
        checked = self._checked(i, result)
        if checked is None:  # a bad answer from a fail-open filter: the next one runs
            return self.on_request(ctx, k + 1)
        if checked is STOP:
            ctx.ran = i + 1
            return None
        if isinstance(checked, LocalReply):
            ctx.ran = i
            return checked
        awaitable: Awaitable[Any] = checked
        return Pending(self._resume_request(k, awaitable, ctx), awaitable)

    def _checked(self, i: int, result: object) -> Any:
        """``result`` if a hook may answer it (None, STOP, a LocalReply, an
        awaitable), else what the filter's failure answers."""
        if result is None or result is STOP or isinstance(result, LocalReply):
            return result
        if inspect.isawaitable(result):
            return result
        return self._failed(i, TypeError(f"hook returned {type(result).__name__}"))

    async def _resume_request(
        self, k: int, awaitable: Awaitable[Any], ctx: RequestContext
    ) -> LocalReply | None:
        hooks = self._request
        while True:
            i = hooks[k][0]
            try:
                result = self._checked(i, await awaitable)
            except Exception as exc:
                result = self._failed(i, exc)
            # An async hook answers like a sync one; what follows runs inline.
            while True:
                if result is None:
                    k += 1
                    if k == len(hooks):
                        return None
                    i = hooks[k][0]
                    try:
                        result = self._checked(i, hooks[k][1](ctx))
                    except Exception as exc:
                        result = self._failed(i, exc)
                    continue
                if result is STOP:
                    ctx.ran = i + 1
                    return None
                if isinstance(result, LocalReply):
                    ctx.ran = i
                    return result
                awaitable = result
                break

    def _failed(self, i: int, exc: BaseException) -> LocalReply | None:
        entry = self._entries[i]
        n = self.counters.incr("filter_errors", entry.name)
        # Logged at 1, 10, 100, ... failures: a broken filter must not flood the log.
        if n & (n - 1) == 0 or str(n).rstrip("0") == "1":
            log.error("filter failed filter=%s count=%d", entry.name, n, exc_info=exc)
        return None if entry.fail_open else FILTER_ERROR

    # -- response phase ------------------------------------------------------

    def on_response(self, ctx: RequestContext) -> Pending | None:
        """Run response hooks in reverse order for the filters whose request hook
        continued (all of them unless the request phase stopped early)."""
        ran = ctx.ran
        hooks = self._response
        for k in range(len(hooks) - 1, -1, -1):
            i, hook = hooks[k]
            if i >= ran:
                continue
            try:
                result = hook(ctx)
            except Exception as exc:
                self._response_failed(i, exc, ctx)
                continue
            if result is None:
                continue
            if inspect.isawaitable(result):
                return Pending(self._resume_response(k, result, ctx, ran), result)
        return None

    async def _resume_response(
        self, k: int, awaitable: Awaitable[Any], ctx: RequestContext, ran: int
    ) -> None:
        hooks = self._response
        try:
            await awaitable
        except Exception as exc:
            self._response_failed(hooks[k][0], exc, ctx)
        for j in range(k - 1, -1, -1):
            i, hook = hooks[j]
            if i >= ran:
                continue
            try:
                result = hook(ctx)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                self._response_failed(i, exc, ctx)

    def _response_failed(self, i: int, exc: BaseException, ctx: RequestContext) -> None:
        if self._failed(i, exc) is not None:
            ctx.status = 500
            ctx.response_edited = True

    async def aclose(self) -> None:
        """Release what the filters hold (clients, files); call after a swap."""
        for entry in self._entries:
            close = getattr(entry.filter, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception:
                    log.exception("closing filter=%s", entry.name)


class Pending:
    """The rest of a phase, to be awaited in one task (``await pending`` or
    ``pending.run()``).  Awaiting it gives None (continue) or a ``LocalReply``."""

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Awaitable[Any], first: Awaitable[Any]) -> None:
        self._coro = coro
        self._first = first  # the hook's awaitable, not yet started

    async def run(self) -> LocalReply | None:
        result: LocalReply | None = await self._coro
        return result

    def __await__(self) -> Generator[Any, None, LocalReply | None]:
        return self.run().__await__()

    def close(self) -> None:
        """Drop a pending phase that will never be awaited (client gone)."""
        for awaitable in (self._coro, self._first):
            close = getattr(awaitable, "close", None)
            if close is not None:
                close()
