"""Topology-spread bookkeeping: matching-pod counts per domain, kept incrementally.

PodTopologySpread needs, for every constraint, how many pods matching its selector run
in each domain (zone, host, ...) and the smallest such count over the domains the pod
may land in. Recounting 10,000 pods per decision is what makes naive schedulers slow,
so counts are registered once per (topology key, selector) and then moved by +1/-1 on
every bind and release. This room knows nothing of resources, taints or scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

Selector = tuple[tuple[str, str], ...]
CountKey = tuple[str, Selector, Selector]  # topology key, pod selector, node selector


def selector_matches(selector: Selector, labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector)


class SpreadCounts:
    def __init__(self) -> None:
        self._counts: dict[CountKey, dict[str, int]] = {}
        # Each registration is filed under its selector's first item (None: empty selector
        # matching every pod), so a bind visits only registrations that might match.
        self._by_item: dict[tuple[str, str] | None, list[CountKey]] = {}
        self._eligible: dict[tuple[str, Selector], tuple[str, ...]] = {}

    def counts(
        self,
        key: str,
        selector: Selector,
        node_selector: Selector,
        placed: Callable[[], Iterable[tuple[Mapping[str, str], Mapping[str, str]]]],
    ) -> dict[str, int]:
        """The live per-domain counts for one constraint, registering it on first use.

        Only pods on nodes that pass the incoming pod's node selector count (Kubernetes'
        nodeAffinityPolicy=Honor). `placed` yields (pod labels, node labels) of every
        bound pod; it is called only when the constraint is new.
        """
        ck = (key, selector, node_selector)
        found = self._counts.get(ck)
        if found is not None:
            return found
        counts: dict[str, int] = {}
        for pod_labels, node_labels in placed():
            domain = node_labels.get(key)
            if (
                domain is not None
                and selector_matches(selector, pod_labels)
                and selector_matches(node_selector, node_labels)
            ):
                counts[domain] = counts.get(domain, 0) + 1
        self._counts[ck] = counts
        self._by_item.setdefault(selector[0] if selector else None, []).append(ck)
        return counts

    def moved(
        self, pod_labels: Mapping[str, str], node_labels: Mapping[str, str], delta: int
    ) -> None:
        """A pod with `pod_labels` was bound (+1) or released (-1) on a node."""
        candidates = self._by_item.get(None, [])
        for item in pod_labels.items():
            more = self._by_item.get(item)
            if more:
                candidates = candidates + more
        for ck in candidates:
            key, selector, node_selector = ck
            domain = node_labels.get(key)
            if (
                domain is not None
                and selector_matches(selector, pod_labels)
                and selector_matches(node_selector, node_labels)
            ):
                counts = self._counts[ck]
                counts[domain] = counts.get(domain, 0) + delta

    def eligible_domains(
        self,
        key: str,
        node_selector: Selector,
        nodes: Callable[[], Iterable[Mapping[str, str]]],
    ) -> tuple[str, ...]:
        """Domains of `key` holding at least one node that passes the pod's node selector
        (Kubernetes' nodeAffinityPolicy=Honor, nodeTaintsPolicy=Ignore)."""
        ek = (key, node_selector)
        found = self._eligible.get(ek)
        if found is not None:
            return found
        domains: set[str] = set()
        for labels in nodes():
            domain = labels.get(key)
            if domain is not None and selector_matches(node_selector, labels):
                domains.add(domain)
        result = tuple(sorted(domains))
        self._eligible[ek] = result
        return result

    def nodes_changed(self) -> None:
        self._eligible.clear()
