"""New W3C ``traceparent`` values, in pure Python (twin of ``_fastpath_trace.pxi``).

``TraceIds(entropy)``: ``entropy(n)`` returns ``n`` random bytes (``os.urandom``
in the sidecar; tests pass their own).  ``traceparent(bound)`` returns
``b"00-" + 32 hex digits (trace id) + b"-" + 16 (span id) + b"-01"`` (or
``-00`` when not sampled), lower-case, the ids taken from the next 24 bytes of
a pool of ``POOL`` entropy bytes read at once; ids that are all zero (invalid
in W3C Trace Context) are skipped.  The trace is sampled when the low 64 bits
of its id are below ``bound`` (``ratio_bound(ratio)``), the rule of
OpenTelemetry's ``TraceIdRatioBased`` sampler, so any tier that samples by
the same ratio from the id agrees.  ``reset()`` empties the pool: call it in
a forked child so that two processes never hand out the same ids.  No clock,
no I/O beyond ``entropy``.

``TraceStart(ids, bound, carried, always, names)`` is the tracing observer's
``exchange_started(exchange, headers)`` for the usual request, one that
carries no trace context: when no field of ``headers`` is named (in any case)
as one of ``names``, it starts a new trace with ``ids.traceparent(bound)``
and returns ``[(b"traceparent", value)]``, the field to send upstream; when
the trace is sampled, or ``always`` (an access log reads the ids), it also
sets the exchange's ``trace_id``, ``span_id``, ``trace_sampled`` and
``user_agent``.  A request that carries a trace field is handed, with its
exchange, to ``carried`` and gets what that returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from meshproxy._fastpath_fields_py import header_value

POOL = 4080  # 170 ids per read
_ID_BYTES = 24  # 16 of trace id, 8 of span id
_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)


class TraceIds:
    __slots__ = ("__weakref__", "_entropy", "_pool", "_pos")

    def __init__(self, entropy: Callable[[int], bytes]) -> None:
        self._entropy = entropy
        self._pool = b""
        self._pos = 0

    def reset(self) -> None:
        self._pool = b""
        self._pos = 0

    def _next(self) -> bytes:
        while True:
            pos = self._pos
            if pos + _ID_BYTES > len(self._pool):
                pool = self._entropy(POOL)
                if not isinstance(pool, bytes) or len(pool) != POOL:
                    raise ValueError(f"entropy must return {POOL} bytes")
                self._pool, pos = pool, 0
            self._pos = pos + _ID_BYTES
            ids = self._pool[pos : pos + _ID_BYTES]
            if ids[:16] != _ZERO_TRACE and ids[16:] != _ZERO_SPAN:
                return ids

    def traceparent(self, bound: int) -> bytes:
        ids = self._next()
        sampled = int.from_bytes(ids[8:16], "big") < bound
        text = ids.hex()
        return f"00-{text[:32]}-{text[32:]}-0{1 if sampled else 0}".encode()


class TraceStart:
    __slots__ = ("_always", "_bound", "_carried", "_ids", "_names")

    def __init__(
        self,
        ids: TraceIds,
        bound: int,
        carried: Callable[[Any, list[tuple[bytes, bytes]]], list[tuple[bytes, bytes]]],
        always: bool,
        names: Iterable[bytes],
    ) -> None:
        self._ids = ids
        self._bound = bound
        self._carried = carried
        self._always = always
        self._names = frozenset(name.lower() for name in names)

    def __call__(
        self, exchange: Any, headers: list[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        names = self._names
        for name, _ in headers:
            if name.lower() in names:
                return self._carried(exchange, headers)
        value = self._ids.traceparent(self._bound)
        sampled = value[54] == 49  # b"1"
        if sampled or self._always:
            exchange.trace_id = value[3:35].decode()
            exchange.span_id = value[36:52].decode()
            exchange.trace_sampled = sampled
            exchange.user_agent = header_value(headers, b"user-agent") or b""
        return [(b"traceparent", value)]


def ratio_bound(ratio: float) -> int:
    """The ``bound`` of ``TraceIds.traceparent`` that samples ``ratio`` of new
    traces (as OpenTelemetry's ``TraceIdRatioBased``: ``round(ratio * 2**64)``)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"sampling ratio {ratio} is not in [0, 1]")
    return round(ratio * (1 << 64))
