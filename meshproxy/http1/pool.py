"""Idle keep-alive upstream connections, per endpoint (sans-IO bookkeeping).

The pool only remembers which connections are idle; connections own their
sockets and timers and tell the pool when they close or expire.  Idle
connections are handed out most-recently-used first: the warmest socket is the
least likely to have been closed by the upstream's own idle timer, and the
coldest ones age out at the other end.

It must not open, close or time anything itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

C = TypeVar("C")


class IdlePool(Generic[C]):
    __slots__ = ("_idle", "max_idle_per_key")

    def __init__(self, max_idle_per_key: int = 128) -> None:
        self._idle: dict[Hashable, deque[C]] = {}
        self.max_idle_per_key = max_idle_per_key

    def put(self, key: Hashable, conn: C) -> bool:
        """Park ``conn`` as idle; False when the endpoint already has enough
        idle connections (the caller then closes ``conn``)."""
        idle = self._idle.get(key)
        if idle is None:
            idle = self._idle[key] = deque()
        if len(idle) >= self.max_idle_per_key:
            return False
        idle.append(conn)
        return True

    def take(self, key: Hashable) -> C | None:
        """The most recently parked idle connection to ``key``, or None."""
        idle = self._idle.get(key)
        if idle:
            return idle.pop()
        return None

    def discard(self, key: Hashable, conn: C) -> None:
        """Forget ``conn`` (it closed or expired); no-op when it is not idle."""
        idle = self._idle.get(key)
        if idle is not None:
            try:
                idle.remove(conn)
            except ValueError:
                return
            if not idle:
                del self._idle[key]

    def idle_count(self, key: Hashable) -> int:
        idle = self._idle.get(key)
        return len(idle) if idle is not None else 0

    def take_all(self) -> list[C]:
        """Empty the pool (drain, shutdown); the caller closes what it gets."""
        out = [conn for idle in self._idle.values() for conn in idle]
        self._idle.clear()
        return out
