"""The record of what the control plane decided on its own and why: rollout
steps, rollbacks, alert-driven scaling.  ``GET /v1/decisions`` reads it.

A bounded in-memory log (newest last); the route changes a decision causes are
also in the store's history, with the same reason, and survive a restart; this
log does not.  Plain data: the caller passes the time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

MAX_DECISIONS = 2000


@dataclass(frozen=True, slots=True)
class Decision:
    time: float  # unix time
    source: str  # rollout | alert
    subject: str  # the service
    action: str  # set_weight | promote | rollback | wait | scale | ...
    reason: str
    actor: str  # who caused it: "rollout" (the driver), an operator, an alert
    version: int | None = None  # the config version written, if any


class DecisionLog:
    def __init__(self, limit: int = MAX_DECISIONS) -> None:
        self._entries: deque[Decision] = deque(maxlen=limit)

    def record(self, decision: Decision) -> Decision:
        self._entries.append(decision)
        return decision

    def newest(
        self, limit: int = 100, source: str | None = None, subject: str | None = None
    ) -> list[Decision]:
        """Newest first, filtered by source and subject when given."""
        found: list[Decision] = []
        for entry in reversed(self._entries):
            if source is not None and entry.source != source:
                continue
            if subject is not None and entry.subject != subject:
                continue
            found.append(entry)
            if len(found) >= limit:
                break
        return found
