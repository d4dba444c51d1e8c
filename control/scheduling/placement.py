"""Placement of pods onto nodes: Kubernetes-style filters, weighted scores, one winner.

How a decision is made (kube-scheduler's framework, condensed into one loop):

1. Filter. Nodes are tested in turn by NodeUnschedulable, NodeAffinity (node selector),
   TaintToleration (NoSchedule / NoExecute), PodTopologySpread's missing-key check,
   then NodeResourcesFit (cpu, memory, pod count), MaxPerNode and PodTopologySpread's
   skew check (DoNotSchedule). The first filter a node fails is the one it is counted
   against in the decision. The load-independent checks come first: their verdicts are
   computed once per node set for all pods alike (`eligibility.py`), so the loop walks
   only the nodes that pass them.
2. Sampling, as kube-scheduler's percentageOfNodesToScore: the search stops once
   `max(100, nodes * pct%)` feasible nodes are found, where pct defaults to
   `max(5, 50 - nodes/125)` (10% = 500 nodes for a 5,000-node cluster). The next
   search starts where this one stopped (a rotating index), so every node gets its
   turn. Rejections therefore count the nodes evaluated, not the whole cluster; when
   nothing fits, every node has been evaluated and the counts are complete.
3. Score the feasible nodes 0..100 per plugin: NodeResourcesFit (LeastAllocated,
   MostAllocated or RequestedToCapacityRatio), NodeResourcesBalancedAllocation,
   TaintToleration (PreferNoSchedule) and PodTopologySpread (ScheduleAnyway); weight
   and sum them.
4. The highest total wins; ties go to the smallest node name, so the same inputs always
   give the same placements.
5. Bind: the node's free resources, its per-group counts and the spread counts move in
   place, so the next decision costs no recount.

Sans-IO: no clock, no I/O, nothing executed; the caller acts on the decisions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import chain, islice, pairwise

from control.scheduling.eligibility import Eligibility, Reason, summarise
from control.scheduling.model import (
    DEFAULT_SCORE_CPU_MILLIS,
    DEFAULT_SCORE_MEMORY_BYTES,
    UNSCHEDULABLE_TAINT_KEY,
    Decision,
    FitStrategy,
    NodeSpec,
    PodSpec,
    SchedulerProfile,
    SchedulingError,
    Taint,
    TaintEffect,
    Toleration,
    WhenUnsatisfiable,
)
from control.scheduling.spread import Selector, SpreadCounts, selector_matches

_R_UNSCHEDULABLE: Reason = ("NodeUnschedulable", "node(s) were unschedulable")
_R_SELECTOR: Reason = ("NodeAffinity", "node(s) didn't match Pod's node affinity/selector")
_R_CPU: Reason = ("NodeResourcesFit", "Insufficient cpu")
_R_MEMORY: Reason = ("NodeResourcesFit", "Insufficient memory")
_R_PODS: Reason = ("NodeResourcesFit", "Too many pods")
_R_MAX_PER_NODE: Reason = ("MaxPerNode", "node(s) already ran the maximum pods of this group")
_R_SPREAD: Reason = ("PodTopologySpread", "node(s) didn't match pod topology spread constraints")
_R_SPREAD_LABEL: Reason = (
    "PodTopologySpread",
    "node(s) didn't match pod topology spread constraints (missing required label)",
)
_UNSCHEDULABLE_TAINT = Taint(UNSCHEDULABLE_TAINT_KEY, "", TaintEffect.NO_SCHEDULE)
_MAX_SCORE = 100
_MEMO_SHAPES = 32
_STATIC_CACHE = 256
_MAX_SHAPES = 65536


@dataclass(frozen=True, slots=True)
class NodeUsage:
    """Requested resources on a node (what NodeResourcesFit compares to capacity)."""

    cpu_millis: int
    memory_bytes: int
    pods: int


class _Node:
    __slots__ = (
        "cap_cpu",
        "cap_mem",
        "free_cpu",
        "free_mem",
        "free_pods",
        "groups",
        "hard_id",
        "labels",
        "memo",
        "name",
        "score_cpu",
        "score_mem",
        "soft_id",
        "spec",
        "unschedulable",
    )

    def __init__(self, spec: NodeSpec, hard_id: int, soft_id: int) -> None:
        self.spec = spec
        self.name = spec.name
        self.labels = dict(spec.labels)
        self.unschedulable = spec.unschedulable
        self.hard_id = hard_id
        self.soft_id = soft_id
        self.cap_cpu = spec.cpu_millis
        self.cap_mem = spec.memory_bytes
        self.free_cpu = spec.cpu_millis
        self.free_mem = spec.memory_bytes
        self.free_pods = spec.max_pods
        # Requested totals with Kubernetes' non-zero defaults, used only for scoring.
        self.score_cpu = 0
        self.score_mem = 0
        self.groups: dict[str, int] = {}
        self.memo: dict[int, tuple[int, int, int]] = {}


class _TaintSets:
    """Distinct taint sets get small ids, so a pod judges each set once, not each node."""

    def __init__(self) -> None:
        self.ids: dict[tuple[Taint, ...], int] = {(): 0}
        self.sets: list[tuple[Taint, ...]] = [()]

    def intern(self, taints: tuple[Taint, ...]) -> int:
        found = self.ids.get(taints)
        if found is None:
            found = self.ids[taints] = len(self.sets)
            self.sets.append(taints)
        return found


class Scheduler:
    def __init__(
        self, nodes: Iterable[NodeSpec] = (), profile: SchedulerProfile | None = None
    ) -> None:
        self.profile = profile or SchedulerProfile()
        self._nodes: list[_Node] = []
        self._by_name: dict[str, _Node] = {}
        self._bound: dict[str, tuple[PodSpec, _Node]] = {}
        self._next_start = 0
        self._hard = _TaintSets()
        self._soft = _TaintSets()
        self._verdicts: dict[tuple[Toleration, ...], list[Reason | None]] = {}
        self._untolerated: dict[tuple[Toleration, ...], list[int]] = {}
        self._spread = SpreadCounts()
        self._static: dict[
            tuple[Selector, tuple[Toleration, ...], tuple[str, ...]], Eligibility[_Node]
        ] = {}
        self._shape = _shape_table(self.profile.shape)
        # Pod request shapes (cpu, memory) numbered, so per-node memos hash small ints.
        self._shapes: dict[tuple[int, int], int] = {}
        for spec in nodes:
            self.add_node(spec)

    # -- cluster state ---------------------------------------------------------------

    def add_node(self, spec: NodeSpec) -> None:
        if spec.name in self._by_name:
            raise SchedulingError(f"node {spec.name} already exists")
        hard = tuple(t for t in spec.taints if t.effect is not TaintEffect.PREFER_NO_SCHEDULE)
        soft = tuple(t for t in spec.taints if t.effect is TaintEffect.PREFER_NO_SCHEDULE)
        node = _Node(spec, self._hard.intern(hard), self._soft.intern(soft))
        self._nodes.append(node)
        self._by_name[spec.name] = node
        self._spread.nodes_changed()
        self._static.clear()

    def remove_node(self, name: str) -> None:
        """Forget an empty node; release or move its pods first."""
        node = self._node(name)
        if node.free_pods != node.spec.max_pods:
            raise SchedulingError(f"node {name} still runs pods")
        self._nodes.remove(node)
        del self._by_name[name]
        self._next_start = 0
        self._spread.nodes_changed()
        self._static.clear()

    def bind(self, pod: PodSpec, node_name: str) -> None:
        """Record a placement made elsewhere (a pod already running), without filtering."""
        self._bind(pod, self._node(node_name))

    def release(self, pod_name: str) -> str:
        """Forget a pod (stopped or evicted); answers the node it ran on."""
        found = self._bound.pop(pod_name, None)
        if found is None:
            raise SchedulingError(f"pod {pod_name} is not placed")
        pod, node = found
        node.free_cpu += pod.cpu_millis
        node.free_mem += pod.memory_bytes
        node.free_pods += 1
        node.memo.clear()
        node.score_cpu -= pod.cpu_millis or DEFAULT_SCORE_CPU_MILLIS
        node.score_mem -= pod.memory_bytes or DEFAULT_SCORE_MEMORY_BYTES
        if pod.group:
            node.groups[pod.group] -= 1
        self._spread.moved(pod.labels, node.labels, -1)
        return node.name

    def usage(self, node_name: str) -> NodeUsage:
        node = self._node(node_name)
        spec = node.spec
        return NodeUsage(
            spec.cpu_millis - node.free_cpu,
            spec.memory_bytes - node.free_mem,
            spec.max_pods - node.free_pods,
        )

    @property
    def placements(self) -> Mapping[str, str]:
        """Pod name -> node name for every placed pod."""
        return {name: node.name for name, (_, node) in self._bound.items()}

    # -- one decision ----------------------------------------------------------------

    def schedule(self, pod: PodSpec) -> Decision:
        """Choose a node for `pod` and bind it there, or explain why none fits."""
        if pod.name in self._bound:
            raise SchedulingError(f"pod {pod.name} is already placed")
        nodes = self._nodes
        total = len(nodes)
        want = self._feasible_to_find(total)
        cpu = pod.cpu_millis
        mem = pod.memory_bytes
        eligible = self._eligibility(pod)
        group = pod.group
        max_per_node = pod.max_per_node or 0
        blocked = self._spread_blocked(pod)

        feasible: list[_Node] = []
        found = 0
        whys: list[Reason] = []
        rejected: list[_Node] = []
        start = self._next_start if self._next_start < total else 0
        # One spread constraint is the common case; it is checked inline.
        spread_key, spread_domains = blocked[0] if blocked else ("", frozenset[str]())
        more_blocked = blocked[1:]
        passing = eligible.nodes
        first = eligible.index_from(start)
        steps = 0
        for node in chain(islice(passing, first, None), islice(passing, first)):
            steps += 1
            if node.free_cpu < cpu:
                why = _R_CPU
            elif node.free_mem < mem:
                why = _R_MEMORY
            elif node.free_pods <= 0:
                why = _R_PODS
            elif max_per_node and node.groups.get(group, 0) >= max_per_node:
                why = _R_MAX_PER_NODE
            elif (spread_domains and node.labels[spread_key] in spread_domains) or (
                more_blocked and any(node.labels[k] in ds for k, ds in more_blocked)
            ):
                why = _R_SPREAD
            else:
                feasible.append(node)
                found += 1
                if found >= want:
                    break
                continue
            whys.append(why)
            rejected.append(node)
        else:
            steps = 0
        evaluated = eligible.walked(start, first, steps) if steps else total
        self._next_start = (start + evaluated) % total if total else 0

        static = {
            why: (number, [nodes[p].name for p in positions])
            for why, (number, positions) in eligible.rejections(start, evaluated).items()
        }
        rejections = summarise(static, whys, rejected)
        if not feasible:
            detail = ", ".join(f"{r.count} {r.reason}" for r in rejections)
            message = f"0/{total} nodes are available" + (f": {detail}." if detail else ".")
            return Decision(pod.name, None, None, total, evaluated, 0, rejections, {}, message)
        winner, score, parts = self._pick(pod, feasible)
        self._bind(pod, winner)
        message = (
            f"placed on {winner.name} (score {score}); {len(feasible)} feasible of "
            f"{evaluated} evaluated, {total} nodes"
        )
        return Decision(
            pod.name,
            winner.name,
            score,
            total,
            evaluated,
            len(feasible),
            rejections,
            parts,
            message,
        )

    # -- internals -------------------------------------------------------------------

    def _node(self, name: str) -> _Node:
        node = self._by_name.get(name)
        if node is None:
            raise SchedulingError(f"no node named {name}")
        return node

    def _feasible_to_find(self, total: int) -> int:
        floor = self.profile.min_feasible_nodes_to_find
        pct = self.profile.percentage_of_nodes_to_score
        if total < floor or pct == 100:
            return total
        if pct is None:
            pct = max(50 - total // 125, 5)
        return max(total * pct // 100, floor)

    def _bind(self, pod: PodSpec, node: _Node) -> None:
        if pod.name in self._bound:
            raise SchedulingError(f"pod {pod.name} is already placed")
        node.free_cpu -= pod.cpu_millis
        node.free_mem -= pod.memory_bytes
        node.free_pods -= 1
        node.memo.clear()
        node.score_cpu += pod.cpu_millis or DEFAULT_SCORE_CPU_MILLIS
        node.score_mem += pod.memory_bytes or DEFAULT_SCORE_MEMORY_BYTES
        if pod.group:
            node.groups[pod.group] = node.groups.get(pod.group, 0) + 1
        self._spread.moved(pod.labels, node.labels, +1)
        self._bound[pod.name] = (pod, node)

    def _taint_verdicts(self, tolerations: tuple[Toleration, ...]) -> list[Reason | None]:
        """Per hard taint set id: None if tolerated, else the first untolerated taint."""
        known = self._verdicts.get(tolerations)
        if known is None:
            known = self._verdicts[tolerations] = []
        for taints in self._hard.sets[len(known) :]:
            bad = next((t for t in taints if not any(x.tolerates(t) for x in tolerations)), None)
            known.append(
                None if bad is None else ("TaintToleration", f"node(s) had untolerated taint {bad}")
            )
        return known

    def _untolerated_soft(self, tolerations: tuple[Toleration, ...]) -> list[int]:
        """Per soft taint set id: how many PreferNoSchedule taints the pod does not tolerate."""
        known = self._untolerated.get(tolerations)
        if known is None:
            known = self._untolerated[tolerations] = []
        relevant = [t for t in tolerations if t.effect in (None, TaintEffect.PREFER_NO_SCHEDULE)]
        for taints in self._soft.sets[len(known) :]:
            known.append(sum(1 for t in taints if not any(x.tolerates(t) for x in relevant)))
        return known

    def _placed(self) -> Iterator[tuple[Mapping[str, str], Mapping[str, str]]]:
        return ((pod.labels, node.labels) for pod, node in self._bound.values())

    def _node_labels(self) -> Iterator[Mapping[str, str]]:
        return (node.labels for node in self._nodes)

    def _eligibility(self, pod: PodSpec) -> Eligibility[_Node]:
        """The nodes `pod` may use whatever the cluster load, and why the others may not
        (NodeUnschedulable, NodeAffinity, TaintToleration, a missing topology key).

        Pods sharing a selector, tolerations and spread keys share one answer, computed
        once per node set.
        """
        selector: Selector = tuple(sorted(pod.node_selector.items()))
        tolerations = pod.tolerations
        keys = tuple(
            sorted(
                {
                    c.topology_key
                    for c in pod.spread
                    if c.when_unsatisfiable is WhenUnsatisfiable.DO_NOT_SCHEDULE
                }
            )
        )
        cache_key = (selector, tolerations, keys)
        found = self._static.get(cache_key)
        if found is not None:
            return found
        unschedulable_ok = any(t.tolerates(_UNSCHEDULABLE_TAINT) for t in tolerations)
        taints = self._taint_verdicts(tolerations)
        verdicts: list[Reason | None] = []
        for node in self._nodes:
            why: Reason | None = None
            if node.unschedulable and not unschedulable_ok:
                why = _R_UNSCHEDULABLE
            elif selector and not selector_matches(selector, node.labels):
                why = _R_SELECTOR
            elif node.hard_id and taints[node.hard_id] is not None:
                why = taints[node.hard_id]
            elif any(key not in node.labels for key in keys):
                why = _R_SPREAD_LABEL
            verdicts.append(why)
        if len(self._static) >= _STATIC_CACHE:
            self._static.clear()
        answer = self._static[cache_key] = Eligibility(self._nodes, verdicts)
        return answer

    def _spread_blocked(self, pod: PodSpec) -> list[tuple[str, frozenset[str]]]:
        """Per DoNotSchedule constraint: its topology key and the domains it rules out now.

        A node in domain d passes when count[d] + selfMatch - minCount <= maxSkew, where
        minCount is the lowest count over the domains the pod's node selector allows.
        Constraints that rule nothing out are left out.
        """
        blocked: list[tuple[str, frozenset[str]]] = []
        node_selector: Selector = tuple(sorted(pod.node_selector.items()))
        for c in pod.spread:
            if c.when_unsatisfiable is not WhenUnsatisfiable.DO_NOT_SCHEDULE:
                continue
            selector = c.selector
            counts = self._spread.counts(c.topology_key, selector, node_selector, self._placed)
            eligible = self._spread.eligible_domains(
                c.topology_key, node_selector, self._node_labels
            )
            lowest = min((counts.get(d, 0) for d in eligible), default=0)
            if c.min_domains is not None and len(eligible) < c.min_domains:
                lowest = 0
            self_match = 1 if selector_matches(selector, pod.labels) else 0
            highest = c.max_skew + lowest - self_match
            domains = frozenset(d for d, n in counts.items() if n > highest)
            if domains:
                blocked.append((c.topology_key, domains))
        return blocked

    def _spread_scores(self, pod: PodSpec, feasible: list[_Node]) -> list[int] | None:
        """PodTopologySpread scores for ScheduleAnyway constraints, or None if the pod has none.

        Raw score per node: sum of count[domain] * log(domains + 2) + (maxSkew - 1) over the
        constraints; then reversed and normalised to 0..100 (fewer matching pods is better).
        Nodes missing a topology key score 0, as in Kubernetes.
        """
        soft = [c for c in pod.spread if c.when_unsatisfiable is WhenUnsatisfiable.SCHEDULE_ANYWAY]
        if not soft:
            return None
        node_selector: Selector = tuple(sorted(pod.node_selector.items()))
        terms = []
        for c in soft:
            counts = self._spread.counts(c.topology_key, c.selector, node_selector, self._placed)
            eligible = self._spread.eligible_domains(
                c.topology_key, node_selector, self._node_labels
            )
            terms.append((c.topology_key, counts, math.log(len(eligible) + 2), c.max_skew - 1))
        raw: list[int | None] = []
        for node in feasible:
            total = 0.0
            for key, counts, weight, offset in terms:
                domain = node.labels.get(key)
                if domain is None:
                    raw.append(None)
                    break
                total += counts.get(domain, 0) * weight + offset
            else:
                raw.append(round(total))
        present = [r for r in raw if r is not None]
        high = max(present, default=0)
        low = min(present, default=0)
        return [
            0 if r is None else _MAX_SCORE if high == 0 else _MAX_SCORE * (high + low - r) // high
            for r in raw
        ]

    def _pick(self, pod: PodSpec, feasible: list[_Node]) -> tuple[_Node, int, dict[str, int]]:
        prof = self.profile
        cpu = pod.cpu_millis or DEFAULT_SCORE_CPU_MILLIS
        mem = pod.memory_bytes or DEFAULT_SCORE_MEMORY_BYTES
        shape = self._shapes.get((cpu, mem))
        if shape is None:
            if len(self._shapes) >= _MAX_SHAPES:
                self._shapes.clear()
                for node in self._nodes:
                    node.memo.clear()
            shape = self._shapes[(cpu, mem)] = len(self._shapes)

        # Plugins whose score is equal on every node cannot change the winner; they add a
        # constant and are not computed per node.
        untolerated = self._untolerated_soft(pod.tolerations)
        taint_counts = [untolerated[n.soft_id] for n in feasible] if len(untolerated) > 1 else []
        worst = max(taint_counts, default=0)
        taint_w = prof.taint_weight
        taint_scores = (
            [taint_w * (_MAX_SCORE - _MAX_SCORE * c // worst) for c in taint_counts]
            if worst
            else None
        )
        spread_w = prof.spread_weight
        spread_scores = self._spread_scores(pod, feasible)
        if spread_scores is not None:
            spread_scores = [spread_w * score for score in spread_scores]
        if taint_scores is not None and spread_scores is not None:
            extras = [t + s for t, s in zip(taint_scores, spread_scores, strict=True)]
        else:
            extras = taint_scores or spread_scores or []

        # Resource scores depend only on the node's requested totals and the pod's request
        # shape; a node changes only when a pod binds or leaves, so most pods find their
        # shape's score already computed (`memo`, cleared on bind and release).
        best = feasible[0]
        best_total = -1
        best_index = 0
        for i, node in enumerate(feasible):
            memo = node.memo.get(shape)
            if memo is None:
                memo = self._resource_scores(node, cpu, mem)
                if len(node.memo) >= _MEMO_SHAPES:
                    node.memo.clear()
                node.memo[shape] = memo
            total = memo[0] + extras[i] if extras else memo[0]
            if total > best_total or (total == best_total and node.name < best.name):
                best = node
                best_total = total
                best_index = i

        _, fit, balanced = best.memo[shape]
        parts = {
            "NodeResourcesFit": fit,
            "NodeResourcesBalancedAllocation": balanced,
            "TaintToleration": taint_w * _MAX_SCORE
            if taint_scores is None
            else taint_scores[best_index],
            "PodTopologySpread": spread_w * _MAX_SCORE
            if spread_scores is None
            else spread_scores[best_index],
        }
        return best, sum(parts.values()), parts

    def _resource_scores(self, node: _Node, cpu: int, mem: int) -> tuple[int, int, int]:
        """Weighted NodeResourcesFit + BalancedAllocation, then each of the two."""
        prof = self.profile
        cc = node.cap_cpu
        cm = node.cap_mem
        rc = node.score_cpu + cpu
        rm = node.score_mem + mem
        strategy = prof.fit_strategy
        if strategy is FitStrategy.LEAST_ALLOCATED:
            sc = (cc - rc) * _MAX_SCORE // cc if cc > 0 and rc <= cc else 0
            sm = (cm - rm) * _MAX_SCORE // cm if cm > 0 and rm <= cm else 0
        elif strategy is FitStrategy.MOST_ALLOCATED:
            sc = min(rc, cc) * _MAX_SCORE // cc if cc else 0
            sm = min(rm, cm) * _MAX_SCORE // cm if cm else 0
        else:
            sc = self._shape[rc * 100 // cc if cc > 0 and rc <= cc else 100]
            sm = self._shape[rm * 100 // cm if cm > 0 and rm <= cm else 100]
        fit = prof.fit_weight * (
            (sc * prof.cpu_weight + sm * prof.memory_weight)
            // (prof.cpu_weight + prof.memory_weight)
        )
        # BalancedAllocation: 1 - standard deviation of the requested fractions; with two
        # resources that is half their difference.
        if cc and cm:
            fc = min(rc / cc, 1.0)
            fm = min(rm / cm, 1.0)
            balanced = int((1.0 - abs(fc - fm) / 2) * _MAX_SCORE)
        else:
            balanced = _MAX_SCORE
        balanced *= prof.balanced_weight
        return fit + balanced, fit, balanced


def _shape_table(points: tuple[tuple[int, int], ...]) -> list[int]:
    """RequestedToCapacityRatio's broken-linear function, tabulated for utilisation 0..100
    and scaled from the shape's 0..10 to 0..100, as Kubernetes does."""
    table = []
    for u in range(101):
        if u <= points[0][0]:
            score = points[0][1] * 10
        elif u >= points[-1][0]:
            score = points[-1][1] * 10
        else:
            score = 0
            for (u0, s0), (u1, s1) in pairwise(points):
                if u0 <= u <= u1:
                    # int() truncates toward zero like Go's integer division.
                    score = s0 * 10 + int((s1 - s0) * 10 * (u - u0) / (u1 - u0))
                    break
        table.append(score)
    return table
