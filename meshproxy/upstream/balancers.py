"""Load balancers: choose one endpoint from a prepared list of candidates.

A balancer never looks at health, ejection, breakers or zones: ``Cluster``
hands it the endpoints that may take traffic right now, rebuilt when that set
changes (``rebuild``), so ``pick`` stays a handful of attribute lookups and at
most one random draw.  No clocks, no I/O; randomness comes from the injected
``rand`` (a ``random.Random().random``-like callable returning [0, 1)).

* ``RoundRobin``: weighted by an earliest-deadline-first schedule computed at
  rebuild (equal weights: plain rotation), started at a random offset so that
  sidecars started together do not all hit the first endpoint first.
* ``RandomPick``: uniform, or by cumulative weight.
* ``LeastRequest``: power of two choices on active requests (divided by the
  weight when weights differ), as Envoy's least_request with choice_count 2;
  both choices come from one random draw.
* ``RingHash``: Karger's ring, as Envoy's ring_hash.  Each endpoint owns
  ``weight * points_per_weight`` points placed by hashing its name, so the
  points of the survivors do not move when another endpoint leaves or
  joins: only the keys of the arcs that change owner move, about 1/N.
"""

from __future__ import annotations

import heapq
import math
import zlib
from bisect import bisect_right
from collections.abc import Callable, Sequence
from math import floor as _floor
from typing import Protocol

from meshproxy.upstream.endpoint import EndpointState

Rand = Callable[[], float]

# A weighted round-robin schedule longer than this is scaled down: it keeps
# rebuilds cheap for very large clusters at the cost of weight precision.
_MAX_SCHEDULE = 1 << 16

# Least request lists every ordered pair of endpoints up to this cluster size
# (240 pairs); larger clusters compute the pair from the draw.
_MAX_PAIR_TABLE = 16


class Balancer(Protocol):
    def rebuild(self, endpoints: Sequence[EndpointState]) -> None: ...

    def pick(self, key: bytes | None) -> EndpointState | None: ...


def _uniform(endpoints: Sequence[EndpointState]) -> bool:
    return all(e.weight == endpoints[0].weight for e in endpoints)


def edf_schedule(weights: Sequence[int]) -> list[int]:
    """One period of an earliest-deadline-first schedule: index ``i`` appears
    ``weights[i]`` times, spread evenly (ties go to the lower index)."""
    g = math.gcd(*weights)
    reduced = [w // g for w in weights]
    total = sum(reduced)
    if total > _MAX_SCHEDULE:
        reduced = [max(1, w * _MAX_SCHEDULE // total) for w in reduced]
        total = sum(reduced)
    heap = [(1.0 / w, i) for i, w in enumerate(reduced)]
    heapq.heapify(heap)
    order = []
    for _ in range(total):
        deadline, i = heap[0]
        order.append(i)
        heapq.heapreplace(heap, (deadline + 1.0 / reduced[i], i))
    return order


class RoundRobin:
    __slots__ = ("_i", "_n", "_order", "_rand")

    def __init__(self, rand: Rand) -> None:
        self._rand = rand
        self._order: list[EndpointState] = []
        self._n = 0
        self._i = 0

    def rebuild(self, endpoints: Sequence[EndpointState]) -> None:
        if not endpoints:
            order: list[EndpointState] = []
        elif _uniform(endpoints):
            order = list(endpoints)
        else:
            order = [endpoints[i] for i in edf_schedule([e.weight for e in endpoints])]
        self._order = order
        self._n = len(order)
        self._i = int(self._rand() * self._n) if order else 0

    def pick(self, key: bytes | None) -> EndpointState | None:
        i = self._i + 1
        if i >= self._n:
            if not self._n:
                return None
            i = 0
        self._i = i
        return self._order[i]


class RandomPick:
    __slots__ = ("_cumulative", "_endpoints", "_n", "_rand", "_total")

    def __init__(self, rand: Rand) -> None:
        self._rand = rand
        self._endpoints: list[EndpointState] = []
        self._cumulative: list[int] | None = None
        self._n = 0
        self._total = 0

    def rebuild(self, endpoints: Sequence[EndpointState]) -> None:
        self._endpoints = list(endpoints)
        self._n = len(endpoints)
        if endpoints and not _uniform(endpoints):
            running = 0
            cumulative = []
            for e in endpoints:
                running += e.weight
                cumulative.append(running)
            self._cumulative = cumulative
            self._total = running
        else:
            self._cumulative = None

    def pick(self, key: bytes | None) -> EndpointState | None:
        n = self._n
        if not n:
            return None
        cumulative = self._cumulative
        if cumulative is None:
            return self._endpoints[int(self._rand() * n)]
        return self._endpoints[bisect_right(cumulative, self._rand() * self._total)]


class LeastRequest:
    """Power of two choices: one draw picks an ordered pair of distinct
    endpoints, uniform over the ``n * (n - 1)`` pairs, and the pair's first
    endpoint wins ties.  For small clusters the pairs are listed at rebuild,
    so a pick is one draw, one index and one comparison."""

    __slots__ = ("_endpoints", "_n", "_pairs", "_rand", "_span", "_weighted")

    def __init__(self, rand: Rand) -> None:
        self._rand = rand
        self._endpoints: list[EndpointState] = []
        self._n = 0
        self._span = 0  # n * (n - 1): the number of ordered pairs
        self._pairs: list[tuple[EndpointState, EndpointState]] | None = None
        self._weighted = False

    def rebuild(self, endpoints: Sequence[EndpointState]) -> None:
        self._endpoints = list(endpoints)
        n = self._n = len(endpoints)
        self._span = n * (n - 1)
        self._weighted = bool(endpoints) and not _uniform(endpoints)
        # Pair k is (k // (n - 1), the k % (n - 1)-th of the others), listed
        # or computed: the same draw gives the same pair either way.
        self._pairs = (
            [(a, b) for i, a in enumerate(endpoints) for j, b in enumerate(endpoints) if i != j]
            if 2 <= n <= _MAX_PAIR_TABLE
            else None
        )

    def pick(self, key: bytes | None) -> EndpointState | None:
        pairs = self._pairs
        if pairs is not None:
            # floor, not int(): the same index for a draw in [0, 1), cheaper.
            a, b = pairs[_floor(self._rand() * self._span)]
        else:
            n = self._n
            if n < 2:
                return self._endpoints[0] if n else None
            i, j = divmod(_floor(self._rand() * self._span), n - 1)
            if j >= i:
                j += 1
            a = self._endpoints[i]
            b = self._endpoints[j]
        if self._weighted:
            # (active + 1) / weight, cross-multiplied to stay in integers.
            if (a.active_requests + 1) * b.weight <= (b.active_requests + 1) * a.weight:
                return a
            return b
        return a if a.active_requests <= b.active_requests else b


# Request keys go on the 32-bit ring by CRC-32, as in nginx's consistent hash:
# stable across processes and hosts (unlike ``hash``) and a single C call,
# several times cheaper per pick than a blake2b digest.
key_hash = zlib.crc32


def points_per_weight(total_weight: int, minimum_ring_size: int) -> int:
    """Ring points per unit of weight so that the full cluster reaches
    ``minimum_ring_size``; rounded up to a power of two so that a cluster
    growing or shrinking by a few endpoints keeps the same value (a change of
    the value moves keys between survivors)."""
    need = max(1, math.ceil(minimum_ring_size / max(1, total_weight)))
    return 1 << (need - 1).bit_length()


class RingHash:
    __slots__ = ("_fallback", "_hashes", "_n", "_owners", "_per_weight")

    def __init__(self, rand: Rand, per_weight: int) -> None:
        self._per_weight = per_weight
        self._hashes: list[int] = []
        self._owners: list[EndpointState] = []
        self._n = 0
        # A request without a key has nothing to stick to: Envoy picks at random.
        self._fallback = RandomPick(rand)

    def rebuild(self, endpoints: Sequence[EndpointState]) -> None:
        points: list[tuple[int, int]] = []
        for index, endpoint in enumerate(endpoints):
            points.extend(
                (h, index) for h in endpoint.ring_hashes(endpoint.weight * self._per_weight)
            )
        points.sort()
        self._hashes = [h for h, _ in points]
        self._owners = [endpoints[i] for _, i in points]
        self._n = len(points)
        self._fallback.rebuild(endpoints)

    def pick(self, key: bytes | None) -> EndpointState | None:
        if key is None:
            return self._fallback.pick(None)
        if not self._n:
            return None
        i = bisect_right(self._hashes, key_hash(key))
        return self._owners[i if i < self._n else 0]


def make_balancer(
    policy: str, rand: Rand, *, total_weight: int = 1, minimum_ring_size: int = 1024
) -> Balancer:
    if policy == "round_robin":
        return RoundRobin(rand)
    if policy == "random":
        return RandomPick(rand)
    if policy == "least_request":
        return LeastRequest(rand)
    if policy == "consistent_hash":
        return RingHash(rand, points_per_weight(total_weight, minimum_ring_size))
    raise ValueError(f"unknown load balancer policy {policy!r}")
