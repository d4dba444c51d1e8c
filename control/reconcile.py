"""The reconcile step: from service specs and reported load to assignments on nodes.

Each ``step(now)``:

1. releases the instances of nodes that stopped reporting (``NodeBook.lapse``);
2. for every service with a spec, asks its ``Autoscaler`` how many instances to run,
   given the number assigned now (a firing scale alert's floor raises it);
3. adds instances through the scheduler (``NodeBook.place``) or removes the newest
   ones, and records each action, with its reason, as a ``Decision``.

Load comes from the agents' reports: per instance, the cumulative inbound request
count and the cumulative time spent in requests, as the instance's sidecar counts
them.  Between two reports, requests/s is the count's rate and the mean concurrency
is the busy time's rate (Little's law: time in flight per second of wall time).

Sans-IO: the caller passes ``now`` (monotonic seconds) and ``wall`` (unix time, for
the decision log) and delivers the assignments; nothing here sleeps or talks HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from control.autoscaler import Autoscaler, AutoscalerConfig, Metric
from control.decisions import Decision
from control.nodes import AgentReport, Assignment, NodeBook, ServiceSpec

NODE_TTL = 15.0


@dataclass
class _Counter:
    time: float
    requests: float
    busy: float


def autoscaler_config(spec: ServiceSpec) -> AutoscalerConfig:
    knobs = spec.autoscaling
    return AutoscalerConfig(
        target=knobs.target,
        metric=Metric(knobs.metric),
        min_replicas=spec.min_replicas,
        max_replicas=spec.max_replicas,
        stable_window=knobs.stable_window,
        panic_window_percentage=knobs.panic_window_percentage,
        scale_down_stabilization=knobs.scale_down_stabilization,
    )


class Reconciler:
    def __init__(self, book: NodeBook, node_ttl: float = NODE_TTL) -> None:
        self.book = book
        self.node_ttl = node_ttl
        self.specs: dict[str, ServiceSpec] = {}
        self.autoscalers: dict[str, Autoscaler] = {}
        self._counters: dict[str, _Counter] = {}
        self._serial = 0
        # Why a service's last placement failed: a service that cannot be placed is
        # retried every step, but the same failure is recorded once.
        self._stuck: dict[str, str] = {}
        # After a restart the nodes come back one by one, each bringing its instances
        # (``NodeBook.adopt``): until ``_settle_until`` nothing is scaled, so that the
        # first node back does not get the replicas still running on the others.
        self._settle_until = float("-inf")

    # -- inputs ----------------------------------------------------------------------

    def set_spec(self, service: str, spec: ServiceSpec) -> None:
        """A new spec replaces the old; the load history survives unless the scaling
        settings changed.  Instances already running keep their old spec."""
        old = self.specs.get(service)
        self.specs[service] = spec
        config = autoscaler_config(spec)
        if old is None or autoscaler_config(old) != config:
            self.autoscalers[service] = Autoscaler(config)

    def restore(self, specs: Mapping[str, ServiceSpec], now: float, grace: float) -> None:
        """Take the specs a restarted control plane loaded, and hold scaling for
        ``grace`` seconds while the agents register again with what they run."""
        for service, spec in specs.items():
            self.set_spec(service, spec)
        if specs:
            self._settle_until = now + grace

    def settling(self, now: float) -> bool:
        return now < self._settle_until

    def remove_spec(self, service: str) -> bool:
        self.autoscalers.pop(service, None)
        return self.specs.pop(service, None) is not None

    def observe(self, report: AgentReport, now: float) -> None:
        """Turn the cumulative counters of a (recorded) agent report into load samples."""
        for item in report.instances:
            assignment = self._assignment(item.id)
            if assignment is None:
                continue
            last = self._counters.get(item.id)
            self._counters[item.id] = _Counter(now, item.requests, item.busy_seconds)
            scaler = self.autoscalers.get(assignment.service)
            if last is None or scaler is None or now <= last.time:
                continue
            if item.requests < last.requests or item.busy_seconds < last.busy:
                continue  # the sidecar restarted: its counters began again
            elapsed = now - last.time
            if scaler.config.metric is Metric.RPS:
                value = (item.requests - last.requests) / elapsed
            else:
                value = (item.busy_seconds - last.busy) / elapsed
            scaler.observe(now, item.id, value)

    # -- the step --------------------------------------------------------------------

    def step(self, now: float, wall: float, floors: Mapping[str, int] = {}) -> list[Decision]:
        decisions: list[Decision] = []
        for instance in self.book.lapse(now, self.node_ttl):
            self._counters.pop(instance, None)
            decisions.append(
                Decision(wall, "scheduler", instance.rpartition("-")[0], "evict",
                         f"{instance}: its node stopped reporting for {self.node_ttl:g}s",
                         "reconciler")
            )  # fmt: skip
        for service in sorted(self._orphans()):
            decisions.extend(
                self._remove(a, wall, "the service spec was deleted")
                for a in self.book.instances_of(service)
            )
        if self.settling(now):
            return decisions
        for service, spec in sorted(self.specs.items()):
            decisions.extend(self._scale(service, spec, now, wall, floors.get(service)))
        return decisions

    def recommend(
        self, service: str, now: float, current: int, floor: int | None = None
    ) -> tuple[int, str]:
        """The autoscaler's count for ``service`` given ``current``, raised to a firing
        alert's floor, and why; also what an external executor (Kubernetes) applies."""
        spec = self.specs[service]
        verdict = self.autoscalers[service].evaluate(now, current)
        desired, reason = verdict.desired, verdict.reason
        if floor is not None and desired < min(floor, spec.max_replicas):
            desired = min(floor, spec.max_replicas)
            reason = f"{reason}; held at the alert floor {desired}"
        return desired, reason

    def _scale(
        self, service: str, spec: ServiceSpec, now: float, wall: float, floor: int | None
    ) -> list[Decision]:
        running = self.book.instances_of(service)
        current = len(running)
        desired, reason = self.recommend(service, now, current, floor)
        if desired == current:
            return []
        decisions = [
            Decision(wall, "autoscaler", service, "scale", f"{current} -> {desired}: {reason}",
                     "autoscaler")
        ]  # fmt: skip
        if desired > current:
            for _ in range(desired - current):
                assignment = Assignment(id=self._new_id(service), service=service, spec=spec)
                placed = self.book.place(assignment)
                if placed.node is None:
                    self._serial -= 1
                    if self._stuck.get(service) == placed.message:
                        return decisions if len(decisions) > 1 else []
                    self._stuck[service] = placed.message
                    decisions.append(
                        Decision(wall, "scheduler", service, "unschedulable",
                                 f"{assignment.id}: {placed.message}", "scheduler")
                    )  # fmt: skip
                    break
                self._stuck.pop(service, None)
                decisions.append(
                    Decision(wall, "scheduler", service, "place",
                             f"{assignment.id} on {placed.node}: {placed.message}", "scheduler")
                )  # fmt: skip
        else:
            # The newest go first: the oldest have warm caches and pooled connections.
            decisions.extend(
                self._remove(a, wall, "scaled down") for a in reversed(running[desired:])
            )
        return decisions

    def _new_id(self, service: str) -> str:
        # Adopted instances keep the ids an earlier run of the control plane gave them.
        self._serial += 1
        while self.book.node_of(f"{service}-{self._serial}") is not None:
            self._serial += 1
        return f"{service}-{self._serial}"

    def _remove(self, assignment: Assignment, wall: float, why: str) -> Decision:
        node = self.book.unassign(assignment.id)
        self._counters.pop(assignment.id, None)
        return Decision(
            wall, "scheduler", assignment.service, "remove",
            f"{assignment.id} from {node}: {why}", "reconciler",
        )  # fmt: skip

    def _orphans(self) -> set[str]:
        assigned = {a.service for per in self.book.nodes for a in self.book.assignments(per)[1]}
        return assigned - set(self.specs)

    def _assignment(self, instance: str) -> Assignment | None:
        node = self.book.node_of(instance)
        if node is None:
            return None
        return next((a for a in self.book.assignments(node)[1] if a.id == instance), None)
