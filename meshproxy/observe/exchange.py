"""One request/response exchange as the observers see it: metrics, access log, tracing.

The data path fills one ``Exchange`` per request (a ``__slots__`` object, no
dict) and hands it to ``Observer.exchange_done`` when the response has been
sent or the exchange failed.  Everything here is a plain value: observers must
not keep references to protocol objects.

Response flags follow Envoy's short codes, which Istio users already read in
their metrics and logs.  ``flags`` is a string of codes joined by ``,`` or
``"-"`` when there are none.
"""

from __future__ import annotations

from typing import Protocol

# Envoy's response flags (the subset meshproxy can set).
NO_ROUTE = "NR"  # no route / unknown service
NO_HEALTHY_UPSTREAM = "UH"  # no endpoint available
UPSTREAM_CONNECT_FAILURE = "UF"
UPSTREAM_OVERFLOW = "UO"  # circuit breaker overflow
UPSTREAM_TIMEOUT = "UT"
UPSTREAM_RESET = "UC"  # upstream connection terminated before the response ended
UPSTREAM_RETRY_LIMIT = "URX"
DOWNSTREAM_TERMINATED = "DC"
LOCAL_REPLY = "LR"
RATE_LIMITED = "RL"
UNAUTHORIZED = "UAEX"  # denied by authz / JWT
FAULT_DELAY = "DI"
FAULT_ABORT = "FI"
BAD_REQUEST = "DPE"  # downstream protocol error


class Exchange:
    """What one exchange was.  Times: ``start_wall`` is epoch seconds (for the
    access log), ``start`` the loop's monotonic clock; ``duration`` seconds."""

    __slots__ = (
        "authority",
        "bytes_in",
        "bytes_out",
        "destination_service",
        "destination_subset",
        "direction",
        "duration",
        "flags",
        "listener",
        "method",
        "parent_span_id",
        "path",
        "request_id",
        "route",
        "source_service",
        "span_id",
        "start",
        "start_wall",
        "status",
        "trace_id",
        "trace_sampled",
        "upstream_host",
        "user_agent",
    )

    def __init__(self, listener: str, direction: str, source_service: str) -> None:
        self.listener = listener
        self.direction = direction  # "outbound" | "inbound"
        self.source_service = source_service
        self.destination_service = "unknown"
        self.destination_subset = "-"
        self.route = "-"
        self.method = b""
        self.authority = b""
        self.path = b""
        self.user_agent = b""
        self.status = 0
        self.flags = "-"
        self.bytes_in = 0
        self.bytes_out = 0
        self.start = 0.0
        self.start_wall = 0.0
        self.duration = 0.0
        self.upstream_host = ""
        self.request_id = b""
        self.trace_id = ""
        self.span_id = ""  # this proxy's span, as sent to the next hop
        self.parent_span_id = ""  # the caller's span when it sent a trace context
        self.trace_sampled = False

    def add_flag(self, flag: str) -> None:
        self.flags = flag if self.flags == "-" else f"{self.flags},{flag}"


class Observer(Protocol):
    """What the data path calls for each exchange; implementations must be cheap
    (a few microseconds), and must never block or raise."""

    def exchange_started(
        self, exchange: Exchange, headers: list[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        """Called once the request head is parsed (``exchange`` has method,
        authority, path, request id).  Returns header fields the proxy must set
        on the upstream request, each REPLACING any field of the same name
        (trace propagation: ``traceparent``, B3); usually an empty list."""
        ...

    def exchange_done(self, exchange: Exchange) -> None: ...


class NullObserver:
    """Observes nothing (tests, benchmarks of the bare path)."""

    def exchange_started(
        self, exchange: Exchange, headers: list[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        return []

    def exchange_done(self, exchange: Exchange) -> None:
        pass
