"""Restart delays for crashed instances: exponential, capped, forgiven after a
stable run.  Plain data: the caller passes the times."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Backoff:
    first: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    stable_after: float = 10.0  # a run this long resets the delay
    _next: float = 0.0

    def crashed(self, started: float, now: float) -> float:
        """The delay before the next start, given when the crashed run began."""
        if now - started >= self.stable_after or self._next == 0.0:
            self._next = self.first
        else:
            self._next = min(self._next * self.factor, self.cap)
        return self._next
