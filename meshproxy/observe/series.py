"""Running series: plain numbers the hot path bumps, published later by a flush.

How this works.  prometheus-client's ``inc``/``observe`` take a lock and, in
multi-process mode, write an mmap file: too slow for once per request.  The
hot path therefore bumps plain numbers (held here, or for the requests
histograms in the fast path's ``ShapeTally``), and ``flush()`` (called from
any thread) adds to the prometheus-client child only the difference since the
last flush.  The flush only *reads* the hot fields, so a
flush racing the event loop at worst publishes an increment one flush late.

Also here: ``BoundedLabel``, which keeps request data from minting label values.

This room must not read clocks or do I/O.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram

__all__ = ["OTHER", "BoundedLabel", "RunningCounter", "RunningHistogram", "upper_bounds"]

OTHER = "other"


def upper_bounds(buckets: tuple[float, ...]) -> tuple[float, ...]:
    """Bucket upper bounds as ``bisect_left`` indexes them (``le`` is inclusive)."""
    return (*buckets, float("inf"))


class RunningCounter:
    __slots__ = ("child", "count", "flushed")

    def __init__(self, child: Counter) -> None:
        self.child = child
        self.count = 0
        self.flushed = 0

    def flush(self) -> int:
        """Publish the new counts; returns how many there were."""
        count = self.count
        delta = count - self.flushed
        if delta:
            self.child.inc(delta)
            self.flushed = count
        return delta


class RunningHistogram:
    """Publishes one histogram child from running per-bucket counts (NOT
    cumulative) and a sum, counted elsewhere (``fastpath.ShapeTally``)."""

    __slots__ = ("child", "flushed_buckets", "flushed_sum")

    def __init__(self, child: Histogram, buckets: int) -> None:
        self.child = child
        self.flushed_sum = 0.0
        self.flushed_buckets = [0] * buckets

    def flush(self, total: float, buckets: list[int]) -> None:
        """Publish what ``total`` and ``buckets`` gained since the last flush."""
        if total == self.flushed_sum and buckets == self.flushed_buckets:
            return
        child: Any = self.child
        # Histogram has no public "add n to bucket i"; _sum and _buckets (one value
        # per bucket, not cumulative) have been its layout for years, and the unit
        # tests pin the rendered buckets, so a change in prometheus-client shows there.
        child._sum.inc(total - self.flushed_sum)
        self.flushed_sum = total
        flushed = self.flushed_buckets
        for i, count in enumerate(buckets):
            if count != flushed[i]:
                child._buckets[i].inc(count - flushed[i])
                flushed[i] = count


class BoundedLabel:
    """Admits declared values, or without a declaration the first ``cap`` seen;
    anything else becomes ``fallback``."""

    __slots__ = ("_cap", "_declared", "_seen", "fallback")

    def __init__(self, cap: int, fallback: str = OTHER) -> None:
        self._cap = cap
        self._declared: frozenset[str] | None = None
        self._seen: set[str] = set()
        self.fallback = fallback

    def declare(self, values: frozenset[str] | None) -> None:
        self._declared = values

    def __call__(self, value: str) -> str:
        if self._declared is not None:
            return value if value in self._declared else self.fallback
        if value in self._seen or value == self.fallback:
            return value
        if len(self._seen) < self._cap:
            self._seen.add(value)
            return value
        return self.fallback
