"""Split hashing of ``_fastpath`` in pure Python (twin of ``_fastpath_split.pxi``).

``split_bucket(key) -> int`` in [0, 10000): 64-bit FNV-1a, then MurmurHash3's
64-bit finaliser, then the top 32 bits scaled by multiply and shift.  The
reasoning and the wire contract (every sidecar computes the same bucket for
the same key: never change a constant or a step) are in
``meshproxy.routing.split``, which uses this function.

``SplitRoutes(routes, bounds, rand)``: one route per backend of a split, in
declared order, with ``bounds`` the backends' exclusive upper buckets
(``routing.split.split_bounds``).  ``pick_key(key)`` answers the route of the
backend owning the key's bucket; ``pick()`` that of a random bucket,
``int(rand() * 10000)`` (at most 9999), one draw per call.  The resolver
keeps one per host whose first rule splits every request.  No I/O, no clock:
the random source is passed in.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

_BUCKETS = 10000
_MASK = 0xFFFFFFFFFFFFFFFF
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


def split_bucket(key: bytes) -> int:
    """The bucket of ``key`` in [0, 10000): stable across processes and hosts."""
    h = _FNV_OFFSET
    for byte in key:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _MASK
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _MASK
    h ^= h >> 33
    return ((h >> 32) * _BUCKETS) >> 32


class SplitRoutes(Generic[T]):
    """The routes of a weighted split and the choice among them: ``pick()``
    for a request without a split key (one draw of ``rand``), ``pick_key(key)``
    for one with a key (its ``split_bucket``)."""

    __slots__ = ("_rand", "bounds", "routes")

    def __init__(
        self, routes: tuple[T, ...], bounds: tuple[int, ...], rand: Callable[[], float]
    ) -> None:
        if len(routes) != len(bounds) or not bounds:
            raise ValueError("one bound per route, at least one route")
        self.routes = routes
        self.bounds = bounds
        self._rand = rand

    def _route(self, bucket: int) -> T:
        i = bisect_right(self.bounds, bucket)
        if i >= len(self.bounds):
            raise IndexError("bucket past the last bound")
        return self.routes[i]

    def pick(self) -> T:
        """The route of a request without a split key: one random draw."""
        return self._route(_draw_bucket(self._rand()))

    def pick_key(self, key: bytes) -> T:
        """The route of a request whose split key is ``key``."""
        return self._route(split_bucket(key))


def _draw_bucket(draw: float) -> int:
    scaled = draw * _BUCKETS
    if scaled >= _BUCKETS:
        return _BUCKETS - 1
    if scaled >= 0.0:
        return int(scaled)
    if scaled != scaled:
        raise ValueError("split draw is not a number")
    return 0
