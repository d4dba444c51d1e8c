"""Per-request counting for the metrics, in pure Python (twin of ``_fastpath_tally.pxi``).

The hot path of ``observe.metrics``: each finished exchange bumps plain
numbers, which a flush later publishes to prometheus-client.

* ``ShapeTally(duration_bounds, bytes_bounds)``: the running duration,
  request-size and response-size histograms of one (direction, source,
  destination, subset).  The bounds are the finite bucket upper bounds, in
  ascending order (at most ``MAX_BOUNDS`` each); a value lands in the first
  bucket whose bound is >= it (``le`` is inclusive), or in the last, ``+Inf``,
  bucket.  ``duration_sum`` / ``request_sum`` / ``response_sum`` and
  ``duration_buckets()`` / ``request_buckets()`` / ``response_buckets()``
  (per-bucket counts, not cumulative, ``len(bounds) + 1`` of them) are read
  by the flush.
* ``ExchangeTally(shape)``: ``count`` of one requests series (its label
  tuple), and the shape it feeds.  ``add(duration, bytes_in, bytes_out)``
  counts an exchange; ``add_duration(duration)`` counts one without sizes.
* ``ExchangeCounter(miss, max_keys)``: called with a finished exchange, it
  finds the exchange's ``ExchangeTally`` by its raw label tuple ``(direction,
  source_service, destination_service, destination_subset, route, status,
  flags)`` in a table, asking ``miss(raw)`` on a miss (the table is emptied
  first when it holds ``max_keys``: raw values are not bounded, the labels
  ``miss`` maps them to are), and adds the exchange's duration and sizes.
  ``tally_for(raw)`` is that lookup alone.  ``clear()`` empties the table
  (labels may now map differently); ``size()`` is its size.

The flush only reads, so a flush from another thread at worst publishes an
increment one flush late.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from itertools import pairwise
from typing import Any

MAX_BOUNDS = 32


def _bounds(values: tuple[float, ...]) -> tuple[float, ...]:
    bounds = tuple(float(v) for v in values)
    if len(bounds) > MAX_BOUNDS:
        raise ValueError(f"at most {MAX_BOUNDS} bucket bounds, got {len(bounds)}")
    if any(b <= a for a, b in pairwise(bounds)):
        raise ValueError("bucket bounds must be ascending")
    return bounds


class ShapeTally:
    __slots__ = (
        "_bytes_bounds",
        "_duration",
        "_duration_bounds",
        "_request",
        "_response",
        "duration_sum",
        "request_sum",
        "response_sum",
    )

    def __init__(self, duration_bounds: tuple[float, ...], bytes_bounds: tuple[float, ...]) -> None:
        self._duration_bounds = _bounds(duration_bounds)
        self._bytes_bounds = _bounds(bytes_bounds)
        self._duration = [0] * (len(self._duration_bounds) + 1)
        self._request = [0] * (len(self._bytes_bounds) + 1)
        self._response = [0] * (len(self._bytes_bounds) + 1)
        self.duration_sum = 0.0
        self.request_sum = 0.0
        self.response_sum = 0.0

    def duration_buckets(self) -> list[int]:
        return list(self._duration)

    def request_buckets(self) -> list[int]:
        return list(self._request)

    def response_buckets(self) -> list[int]:
        return list(self._response)

    def add_duration(self, duration: float) -> None:
        self.duration_sum += duration
        self._duration[bisect_left(self._duration_bounds, duration)] += 1

    def add(self, duration: float, bytes_in: int, bytes_out: int) -> None:
        self.add_duration(duration)
        self.request_sum += bytes_in
        self._request[bisect_left(self._bytes_bounds, bytes_in)] += 1
        self.response_sum += bytes_out
        self._response[bisect_left(self._bytes_bounds, bytes_out)] += 1


class ExchangeTally:
    __slots__ = ("count", "shape")

    def __init__(self, shape: ShapeTally) -> None:
        self.shape = shape
        self.count = 0

    def add(self, duration: float, bytes_in: int, bytes_out: int) -> None:
        self.count += 1
        self.shape.add(duration, bytes_in, bytes_out)

    def add_duration(self, duration: float) -> None:
        self.count += 1
        self.shape.add_duration(duration)


class ExchangeCounter:
    __slots__ = ("_max", "_miss", "_table")

    def __init__(self, miss: Callable[[tuple[Any, ...]], ExchangeTally], max_keys: int) -> None:
        self._miss = miss
        self._max = max_keys
        self._table: dict[tuple[Any, ...], ExchangeTally] = {}

    def clear(self) -> None:
        self._table = {}

    def size(self) -> int:
        return len(self._table)

    def tally_for(self, raw: tuple[Any, ...]) -> ExchangeTally:
        tally = self._table.get(raw)
        if tally is None:
            tally = self._miss(raw)
            if len(self._table) >= self._max:
                self._table = {}
            self._table[raw] = tally
        return tally

    def __call__(self, ex: Any) -> None:
        raw = (
            ex.direction,
            ex.source_service,
            ex.destination_service,
            ex.destination_subset,
            ex.route,
            ex.status,
            ex.flags,
        )
        tally = self._table.get(raw)
        if tally is None:
            tally = self._miss(raw)
            if len(self._table) >= self._max:
                self._table = {}
            self._table[raw] = tally
        tally.add(ex.duration, ex.bytes_in, ex.bytes_out)
