"""Load-independent filter verdicts, and the accounting of rejected nodes.

NodeUnschedulable, NodeAffinity, TaintToleration and PodTopologySpread's missing-key
check depend only on the node and on the pod's node selector, tolerations and spread
keys, never on what runs where. Pods that share those share one `Eligibility`: the nodes
that pass, in node order, and per reason the positions of those that do not. The
placement loop walks only the passing nodes; the nodes rejected in the stretch it walked
are counted afterwards by bisection, not one by one. This room knows nothing of
resources, spread counts or scores.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

from control.scheduling.model import Rejection

Reason = tuple[str, str]  # (filter plugin, message)
SAMPLE_NAMES = 3


class Named(Protocol):
    @property
    def name(self) -> str: ...


N = TypeVar("N", bound=Named)


class Eligibility(Generic[N]):
    __slots__ = ("nodes", "positions", "rejected", "total")

    def __init__(self, nodes: Sequence[N], verdicts: Sequence[Reason | None]) -> None:
        self.total = len(nodes)
        self.nodes: list[N] = []
        self.positions: list[int] = []
        self.rejected: dict[Reason, list[int]] = {}
        for position, (node, why) in enumerate(zip(nodes, verdicts, strict=True)):
            if why is None:
                self.nodes.append(node)
                self.positions.append(position)
            else:
                self.rejected.setdefault(why, []).append(position)

    def index_from(self, start: int) -> int:
        """Index in `nodes` of the first passing node at or after cluster position `start`
        (`len(nodes)` when there is none: the walk wraps to the beginning)."""
        return bisect_left(self.positions, start)

    def walked(self, start: int, first: int, steps: int) -> int:
        """How many cluster positions a walk covered that began at position `start`, at
        passing index `first`, and stopped on its `steps`-th passing node."""
        last = self.positions[(first + steps - 1) % len(self.positions)]
        return (last - start) % self.total + 1

    def rejections(self, start: int, count: int) -> dict[Reason, tuple[int, list[int]]]:
        """Per reason: the rejected nodes among `count` positions from `start` (wrapping),
        and the positions of the first few in walking order."""
        end = start + count
        spans = [(start, min(end, self.total))]
        if end > self.total:
            spans.append((0, end - self.total))
        found: dict[Reason, tuple[int, list[int]]] = {}
        for why, positions in self.rejected.items():
            number = 0
            first: list[int] = []
            for low, high in spans:
                i = bisect_left(positions, low)
                j = bisect_left(positions, high)
                number += j - i
                first.extend(positions[i : min(j, i + SAMPLE_NAMES - len(first))])
            if number:
                found[why] = (number, first)
        return found


def summarise(
    static: dict[Reason, tuple[int, list[str]]], whys: list[Reason], rejected: Sequence[Named]
) -> tuple[Rejection, ...]:
    """All rejections of one decision, most frequent first, with a few node names each.

    `static` comes from `Eligibility.rejections` (names resolved); `whys` and `rejected`
    are what the placement loop appended, in walking order. Counting happens here, in C,
    so the loop itself only appends.
    """
    counts = Counter(whys)
    samples: dict[Reason, list[str]] = {why: [] for why in counts}
    missing = sum(min(n, SAMPLE_NAMES) for n in counts.values())
    for why, node in zip(whys, rejected, strict=True):
        if not missing:
            break
        names = samples[why]
        if len(names) < SAMPLE_NAMES:
            names.append(node.name)
            missing -= 1
    for why, (number, names) in static.items():
        counts[why] = number
        samples[why] = names
    return tuple(
        Rejection(f, r, n, tuple(samples[(f, r)]))
        for (f, r), n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    )
