"""What the scheduler reads and what it answers: nodes, pods, taints, decisions.

Plain frozen values with the Kubernetes meanings (NodeSpec ~ Node, PodSpec ~ the
scheduling part of a Pod). Resources are integers (millicores, bytes) so the placement
loop compares ints only; `parse_cpu` / `parse_memory` turn Kubernetes quantities into
them at the edge. This room holds no placement logic and no mutable cluster state.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction

ZONE_LABEL = "topology.kubernetes.io/zone"
HOSTNAME_LABEL = "kubernetes.io/hostname"
UNSCHEDULABLE_TAINT_KEY = "node.kubernetes.io/unschedulable"

# The requests Kubernetes assumes for scoring when a pod declares none
# (GetNonzeroRequests): without them, request-less pods would all pile onto one node.
DEFAULT_SCORE_CPU_MILLIS = 100
DEFAULT_SCORE_MEMORY_BYTES = 200 * 1024 * 1024


class SchedulingError(ValueError):
    """A malformed spec or an impossible state change (unknown pod, duplicate node)."""


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class TolerationOperator(StrEnum):
    EQUAL = "Equal"
    EXISTS = "Exists"


class WhenUnsatisfiable(StrEnum):
    DO_NOT_SCHEDULE = "DoNotSchedule"
    SCHEDULE_ANYWAY = "ScheduleAnyway"


class FitStrategy(StrEnum):
    LEAST_ALLOCATED = "LeastAllocated"
    MOST_ALLOCATED = "MostAllocated"
    REQUESTED_TO_CAPACITY_RATIO = "RequestedToCapacityRatio"


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str = ""
    effect: TaintEffect = TaintEffect.NO_SCHEDULE

    def __str__(self) -> str:
        return f"{{{self.key}: {self.value}}}" if self.value else f"{{{self.key}}}"


@dataclass(frozen=True, slots=True)
class Toleration:
    """An empty key with `Exists` tolerates every taint; `effect=None` matches all effects."""

    key: str = ""
    operator: TolerationOperator = TolerationOperator.EQUAL
    value: str = ""
    effect: TaintEffect | None = None

    def __post_init__(self) -> None:
        if not self.key and self.operator is not TolerationOperator.EXISTS:
            raise SchedulingError("a toleration with an empty key needs operator Exists")
        if self.operator is TolerationOperator.EXISTS and self.value:
            raise SchedulingError("a toleration with operator Exists takes no value")

    def tolerates(self, taint: Taint) -> bool:
        # Same order as k8s.io/api/core/v1 Toleration.ToleratesTaint.
        if self.effect is not None and self.effect is not taint.effect:
            return False
        if self.key and self.key != taint.key:
            return False
        if self.operator is TolerationOperator.EXISTS:
            return True
        return self.value == taint.value


@dataclass(frozen=True, slots=True)
class SpreadConstraint:
    """PodTopologySpread: pods matching `match_labels` (empty: all pods) are kept within
    `max_skew` of the least-loaded eligible domain of `topology_key`."""

    max_skew: int = 1
    topology_key: str = ZONE_LABEL
    when_unsatisfiable: WhenUnsatisfiable = WhenUnsatisfiable.DO_NOT_SCHEDULE
    match_labels: Mapping[str, str] = field(default_factory=dict)
    min_domains: int | None = None

    def __post_init__(self) -> None:
        if self.max_skew < 1:
            raise SchedulingError("max_skew must be at least 1")
        if self.min_domains is not None and (
            self.min_domains < 1 or self.when_unsatisfiable is not WhenUnsatisfiable.DO_NOT_SCHEDULE
        ):
            raise SchedulingError("min_domains must be >= 1 and needs DoNotSchedule")

    @property
    def selector(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(self.match_labels.items()))


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    cpu_millis: int
    memory_bytes: int
    max_pods: int = 110
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    unschedulable: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise SchedulingError("a node needs a name")
        if self.cpu_millis < 0 or self.memory_bytes < 0 or self.max_pods < 0:
            raise SchedulingError(f"node {self.name}: capacities must not be negative")


@dataclass(frozen=True, slots=True)
class PodSpec:
    """`max_per_node` caps how many pods of the same `group` (the service) share a node."""

    name: str
    cpu_millis: int = 0
    memory_bytes: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    spread: tuple[SpreadConstraint, ...] = ()
    group: str = ""
    max_per_node: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise SchedulingError("a pod needs a name")
        if self.cpu_millis < 0 or self.memory_bytes < 0:
            raise SchedulingError(f"pod {self.name}: requests must not be negative")
        if self.max_per_node is not None and (self.max_per_node < 1 or not self.group):
            raise SchedulingError(f"pod {self.name}: max_per_node needs a group and a value >= 1")


@dataclass(frozen=True, slots=True)
class SchedulerProfile:
    """Score plugin weights and strategy; defaults are the kube-scheduler defaults.

    `shape` is the RequestedToCapacityRatio function: (utilisation %, score 0..10) points,
    linear in between. `percentage_of_nodes_to_score=None` is Kubernetes' adaptive value
    (50% - nodes/125, at least 5%); 100 scores every feasible node.
    """

    fit_strategy: FitStrategy = FitStrategy.LEAST_ALLOCATED
    cpu_weight: int = 1
    memory_weight: int = 1
    shape: tuple[tuple[int, int], ...] = ((0, 10), (100, 0))
    fit_weight: int = 1
    balanced_weight: int = 1
    taint_weight: int = 3
    spread_weight: int = 2
    percentage_of_nodes_to_score: int | None = None
    min_feasible_nodes_to_find: int = 100

    def __post_init__(self) -> None:
        if (
            self.cpu_weight < 0
            or self.memory_weight < 0
            or self.cpu_weight + self.memory_weight == 0
        ):
            raise SchedulingError("resource weights must be >= 0 and not both 0")
        if min(self.fit_weight, self.balanced_weight, self.taint_weight, self.spread_weight) < 0:
            raise SchedulingError("plugin weights must not be negative")
        pct = self.percentage_of_nodes_to_score
        if pct is not None and not 0 < pct <= 100:
            raise SchedulingError("percentage_of_nodes_to_score must be in 1..100")
        points = [u for u, _ in self.shape]
        if not self.shape or points != sorted(set(points)):
            raise SchedulingError("shape needs points with strictly increasing utilisation")
        if any(not 0 <= u <= 100 or not 0 <= s <= 10 for u, s in self.shape):
            raise SchedulingError("shape points must have utilisation 0..100 and score 0..10")


@dataclass(frozen=True, slots=True)
class Rejection:
    """How many of the evaluated nodes one filter removed, and why, with a few names."""

    filter: str
    reason: str
    count: int
    nodes: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "filter": self.filter,
            "reason": self.reason,
            "count": self.count,
            "nodes": list(self.nodes),
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """One scheduling decision. `node is None` means nothing was placed; `message` says why.

    `nodes_evaluated` may be below `nodes_total`: like kube-scheduler, the search stops
    once enough feasible nodes are found, so rejections count only evaluated nodes.
    `scores` is the winner's weighted score per plugin.
    """

    pod: str
    node: str | None
    score: int | None
    nodes_total: int
    nodes_evaluated: int
    feasible: int
    rejections: tuple[Rejection, ...]
    scores: Mapping[str, int]
    message: str

    @property
    def placed(self) -> bool:
        return self.node is not None

    def to_dict(self) -> dict[str, object]:
        return {
            "pod": self.pod,
            "node": self.node,
            "score": self.score,
            "nodes_total": self.nodes_total,
            "nodes_evaluated": self.nodes_evaluated,
            "feasible": self.feasible,
            "rejections": [r.to_dict() for r in self.rejections],
            "scores": dict(self.scores),
            "message": self.message,
        }


_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_FACTORS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def parse_cpu(text: str) -> int:
    """A Kubernetes CPU quantity ("250m", "2", "0.5") as millicores."""
    m = _QUANTITY.match(text.strip())
    if m is None or m.group(2) not in (None, "m"):
        raise SchedulingError(f"bad cpu quantity {text!r}")
    number = Fraction(m.group(1))
    millis = number if m.group(2) == "m" else number * 1000
    if millis.denominator != 1:
        raise SchedulingError(f"cpu quantity {text!r} is finer than a millicore")
    return int(millis)


def parse_memory(text: str) -> int:
    """A Kubernetes memory quantity ("512Mi", "1G", "1000") as bytes."""
    m = _QUANTITY.match(text.strip())
    if m is None or m.group(2) == "m":
        raise SchedulingError(f"bad memory quantity {text!r}")
    value = Fraction(m.group(1)) * _FACTORS[m.group(2)]
    if value.denominator != 1:
        raise SchedulingError(f"memory quantity {text!r} is not a whole number of bytes")
    return int(value)
