"""What a rule does to a request besides choosing its backend: header edits,
path and host rewrites, fault injection, mirroring.

Compiled once per snapshot into byte-level objects; the per-request functions
take the request's bytes and, for the random parts, a float in [0, 1) that the
caller draws, so every decision here is reproducible in a test.  Nothing here
sends, sleeps or mirrors: the proxy acts on the answers.
"""

from __future__ import annotations

from typing import NamedTuple

from meshproxy.config.routes import Fault, HeaderOps


class HeaderEdit:
    """Compiled ``HeaderOps``: names lower-cased for comparison, sent as written."""

    __slots__ = ("add", "drop", "set")

    def __init__(self, spec: HeaderOps) -> None:
        self.set = tuple((name.encode(), value.encode()) for name, value in spec.set.items())
        self.add = tuple((name.encode(), value.encode()) for name, value in spec.add.items())
        # ``set`` replaces every earlier value, so it drops them like ``remove``.
        self.drop = frozenset(name.lower().encode() for name in [*spec.remove, *spec.set])

    @classmethod
    def of(cls, spec: HeaderOps) -> HeaderEdit | None:
        """None for an empty edit, so the caller can skip it with one test."""
        if not (spec.set or spec.add or spec.remove):
            return None
        return cls(spec)

    def apply(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """A new header list: removed and set names dropped, then set, then added."""
        drop = self.drop
        kept = [pair for pair in headers if pair[0].lower() not in drop] if drop else list(headers)
        kept.extend(self.set)
        kept.extend(self.add)
        return kept


def replace_prefix(target: bytes, matched: bytes, replacement: bytes) -> bytes:
    """Rewrite the path prefix ``matched`` of ``target`` to ``replacement``.

    As the Gateway API's ``ReplacePrefixMatch``: ``/api`` -> ``/`` turns
    ``/api/users`` into ``/users`` (not ``//users``), and ``/`` -> ``/v2``
    turns ``/api`` into ``/v2/api`` (not ``/v2api``).  The query is kept.  A
    target that does not start with ``matched`` comes back unchanged.
    """
    if not target.startswith(matched):
        return target
    rest = target[len(matched) :]
    if matched.endswith(b"/") and rest and not rest.startswith(b"/"):
        rest = b"/" + rest  # the matched slash separates, it is not part of the prefix
    if replacement.endswith(b"/") and rest.startswith(b"/"):
        rest = rest[1:]
    path = replacement + rest
    if not path.startswith(b"/"):
        path = b"/" + path
    return path


class FaultPolicy:
    """A rule's ``fault``, compiled."""

    __slots__ = ("abort_percent", "abort_status", "delay", "delay_percent")

    def __init__(self, spec: Fault) -> None:
        self.delay = spec.delay.fixed if spec.delay is not None else 0.0
        self.delay_percent = spec.delay.percent if spec.delay is not None else 0.0
        self.abort_status = spec.abort.status if spec.abort is not None else 0
        self.abort_percent = spec.abort.percent if spec.abort is not None else 0.0


class FaultAction(NamedTuple):
    delay: float  # seconds to hold the request first; 0.0 for none
    abort: int | None  # the status to answer with instead of forwarding


NO_FAULT = FaultAction(0.0, None)


def chosen(percent: float, rand: float) -> bool:
    """Whether a request falls in ``percent``% of the traffic, ``rand`` in [0, 1)."""
    return rand * 100.0 < percent


def fault_for(policy: FaultPolicy | None, rand_delay: float, rand_abort: float) -> FaultAction:
    """The faults to inject into one request.  Delay and abort are drawn apart
    (as Istio does): a request may be delayed and then aborted."""
    if policy is None:
        return NO_FAULT
    delay = policy.delay if policy.delay and chosen(policy.delay_percent, rand_delay) else 0.0
    abort = (
        policy.abort_status
        if policy.abort_status and chosen(policy.abort_percent, rand_abort)
        else None
    )
    if not delay and abort is None:
        return NO_FAULT
    return FaultAction(delay, abort)
