"""Counters of the policy room: refusals, fail-open/closed decisions, filter errors.

Plain integers keyed by (what, label), kept per chain; the observe room reads
``items()`` to export them.  No clock, no lock: one event loop per worker.
"""

from __future__ import annotations

from collections.abc import Iterator


class Counters:
    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}

    def incr(self, what: str, label: str = "") -> int:
        key = (what, label)
        n = self._counts.get(key, 0) + 1
        self._counts[key] = n
        return n

    def get(self, what: str, label: str = "") -> int:
        return self._counts.get((what, label), 0)

    def items(self) -> Iterator[tuple[tuple[str, str], int]]:
        return iter(sorted(self._counts.items()))
