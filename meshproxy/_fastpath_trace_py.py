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
"""

from __future__ import annotations

from collections.abc import Callable

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


def ratio_bound(ratio: float) -> int:
    """The ``bound`` of ``TraceIds.traceparent`` that samples ``ratio`` of new
    traces (as OpenTelemetry's ``TraceIdRatioBased``: ``round(ratio * 2**64)``)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"sampling ratio {ratio} is not in [0, 1]")
    return round(ratio * (1 << 64))
