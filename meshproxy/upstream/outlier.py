"""Outlier detection with Envoy's semantics (consecutive 5xx and consecutive
gateway errors), over the endpoints of one service.

The ejection math.  Each endpoint carries an ejection multiplier, 0 at first.
An ejection raises it by one and keeps the endpoint out for
``base_ejection_time * multiplier``, capped at ``max(max_ejection_time,
base_ejection_time)`` (the multiplier itself stops growing at the cap, so it
decays promptly).  Every sweep (``interval``) lowers the multiplier of each
endpoint that is back and has been back for at least one interval, so an
endpoint that keeps failing stays out longer each time and one that recovers
is forgiven gradually.

Consecutive-error ejections happen at once when a counter reaches its
threshold, as Envoy does; the counter is then reset whether or not the
ejection was allowed.  An ejection is refused (and counted as an overflow)
when it would push the ejected share over ``max_ejection_percent``, except
that one endpoint can always be ejected.  Un-ejection happens exactly when the
ejection time is up (Envoy waits for the next sweep; exact is easier to
reason about and never later).  Outcomes of requests to an ejected endpoint
are ignored, and its counters restart from zero when it comes back.

Sans-IO: every method takes ``now``; the caller (``Cluster``) decides when to
call ``advance`` by looking at ``next_deadline``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from meshproxy.config.policy import OutlierDetection
from meshproxy.upstream.endpoint import EndpointState


class OutlierDetector:
    __slots__ = (
        "_max_multiplier",
        "_max_time",
        "config",
        "ejections",
        "endpoints",
        "next_sweep",
    )

    def __init__(
        self, config: OutlierDetection, endpoints: Sequence[EndpointState], now: float
    ) -> None:
        self.config = config
        self.endpoints = list(endpoints)
        self._max_time = max(config.max_ejection_time, config.base_ejection_time)
        self._max_multiplier = max(1, math.ceil(self._max_time / config.base_ejection_time))
        self.next_sweep = now + config.interval
        self.ejections: dict[str, int] = {
            "consecutive_5xx": 0,
            "consecutive_gateway_errors": 0,
            "overflow": 0,
        }

    @property
    def ejected_count(self) -> int:
        # Counted, not cached: endpoint state outlives a snapshot swap, and a
        # count kept here could drift from the flags.
        return sum(1 for e in self.endpoints if e.ejected)

    @property
    def next_deadline(self) -> float:
        deadline = self.next_sweep
        for endpoint in self.endpoints:
            if endpoint.ejected and endpoint.ejected_until < deadline:
                deadline = endpoint.ejected_until
        return deadline

    def record_error(self, endpoint: EndpointState, status: int, now: float) -> bool:
        """Count a 5xx (``status`` >= 500); True when the endpoint got ejected."""
        if endpoint.ejected:
            return False
        config = self.config
        kind = None
        if 502 <= status <= 504:
            endpoint.consecutive_gateway += 1
            threshold = config.consecutive_gateway_errors
            if threshold is not None and endpoint.consecutive_gateway >= threshold:
                kind = "consecutive_gateway_errors"
        else:
            endpoint.consecutive_gateway = 0
        endpoint.consecutive_5xx += 1
        if kind is None and endpoint.consecutive_5xx >= config.consecutive_5xx:
            kind = "consecutive_5xx"
        if kind is None:
            return False
        endpoint.consecutive_5xx = 0
        endpoint.consecutive_gateway = 0
        return self._eject(endpoint, kind, now)

    def _eject(self, endpoint: EndpointState, kind: str, now: float) -> bool:
        ejected = self.ejected_count
        if ejected and (ejected + 1) * 100 > (
            self.config.max_ejection_percent * len(self.endpoints)
        ):
            self.ejections["overflow"] += 1
            return False
        multiplier = min(endpoint.eject_multiplier + 1, self._max_multiplier)
        endpoint.eject_multiplier = multiplier
        endpoint.ejected = True
        endpoint.ejected_until = now + min(
            self.config.base_ejection_time * multiplier, self._max_time
        )
        endpoint.times_ejected += 1
        self.ejections[kind] += 1
        return True

    def _uneject_due(self, now: float) -> bool:
        changed = False
        for endpoint in self.endpoints:
            if endpoint.ejected and endpoint.ejected_until <= now:
                endpoint.ejected = False
                endpoint.last_unejected = endpoint.ejected_until
                endpoint.consecutive_5xx = 0
                endpoint.consecutive_gateway = 0
                changed = True
        return changed

    def sweep(self, now: float) -> bool:
        """One interval tick: return endpoints whose time is up, decay the
        multipliers of endpoints back for at least an interval.  True when an
        endpoint came back."""
        changed = self._uneject_due(now)
        interval = self.config.interval
        for endpoint in self.endpoints:
            back = endpoint.last_unejected
            if (
                endpoint.eject_multiplier
                and not endpoint.ejected
                and back is not None
                and now - back >= interval
            ):
                endpoint.eject_multiplier -= 1
        self.next_sweep = now + interval
        return changed

    def advance(self, now: float) -> bool:
        """Catch up with ``now``: the sweeps that fell due (each at its own
        time, so decay is the same however late the caller is), then exact
        un-ejections.  True when an endpoint came back."""
        changed = False
        # A multiplier never exceeds _max_multiplier, so after that many sweeps
        # with nobody ejected every multiplier is 0 and the rest are no-ops.
        # The hard cap bounds a very long idle gap with a tiny interval; the
        # decay of the sweeps skipped then is lost, which errs on the cautious side.
        budget = self._max_multiplier + 2
        cap = 1000
        while self.next_sweep <= now and budget and cap:
            changed |= self.sweep(self.next_sweep)
            cap -= 1
            if not self.ejected_count:
                budget -= 1
        if self.next_sweep <= now:
            interval = self.config.interval
            self.next_sweep += interval * math.ceil((now - self.next_sweep) / interval + 1e-9)
        changed |= self._uneject_due(now)
        return changed
