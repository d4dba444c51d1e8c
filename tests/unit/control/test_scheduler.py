import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.scheduler import (
    HOSTNAME_LABEL,
    ZONE_LABEL,
    Decision,
    FitStrategy,
    NodeSpec,
    NodeUsage,
    PodSpec,
    Scheduler,
    SchedulerProfile,
    SchedulingError,
    SpreadConstraint,
    Taint,
    TaintEffect,
    Toleration,
    TolerationOperator,
    WhenUnsatisfiable,
    parse_cpu,
    parse_memory,
)

GIB = 2**30


def node(name: str, cpu: int = 4000, mem: int = 8 * GIB, **kw: Any) -> NodeSpec:
    labels = kw.pop("labels", {HOSTNAME_LABEL: name})
    return NodeSpec(name, cpu, mem, labels=labels, **kw)


def zoned(name: str, zone: str, **kw: Any) -> NodeSpec:
    return node(name, labels={HOSTNAME_LABEL: name, ZONE_LABEL: zone}, **kw)


def pod(name: str, cpu: int = 100, mem: int = GIB, **kw: Any) -> PodSpec:
    return PodSpec(name, cpu, mem, **kw)


def reasons(decision: Decision) -> dict[str, int]:
    return {r.reason: r.count for r in decision.rejections}


# -- NodeResourcesFit ----------------------------------------------------------------


def test_nodes_short_of_cpu_or_memory_are_filtered_with_the_missing_resource() -> None:
    s = Scheduler([node("small-cpu", cpu=500), node("small-mem", mem=GIB), node("big")])
    d = s.schedule(pod("p", cpu=1000, mem=2 * GIB))
    assert d.node == "big"
    assert reasons(d) == {"Insufficient cpu": 1, "Insufficient memory": 1}
    assert {r.filter for r in d.rejections} == {"NodeResourcesFit"}
    assert s.usage("big") == NodeUsage(1000, 2 * GIB, 1)


def test_node_pod_capacity_is_a_resource_too() -> None:
    s = Scheduler([node("n", max_pods=2)])
    assert s.schedule(pod("a")).placed
    assert s.schedule(pod("b")).placed
    d = s.schedule(pod("c"))
    assert d.node is None
    assert reasons(d) == {"Too many pods": 1}


def test_no_feasible_node_places_nothing_and_names_every_filter() -> None:
    ssd = {"disk": "ssd"}
    nodes = [
        node("tainted", labels=ssd, taints=(Taint("dedicated", "gpu"),)),
        node("full", cpu=100, labels=ssd),
        node("cordoned", labels=ssd, unschedulable=True),
        node("other-disk", labels={"disk": "hdd"}),
    ]
    s = Scheduler(nodes)
    d = s.schedule(pod("p", cpu=500, node_selector=ssd))
    assert not d.placed and d.node is None and d.score is None
    assert d.nodes_evaluated == d.nodes_total == 4
    assert d.feasible == 0
    assert {r.filter: (r.count, r.nodes) for r in d.rejections} == {
        "TaintToleration": (1, ("tainted",)),
        "NodeResourcesFit": (1, ("full",)),
        "NodeUnschedulable": (1, ("cordoned",)),
        "NodeAffinity": (1, ("other-disk",)),
    }
    assert d.message.startswith("0/4 nodes are available: 1 ")
    for phrase in ("Insufficient cpu", "untolerated taint {dedicated: gpu}", "unschedulable"):
        assert phrase in d.message
    assert s.placements == {}
    assert all(s.usage(n.name) == NodeUsage(0, 0, 0) for n in nodes)


def test_rejection_reasons_are_counted_per_filter_with_at_most_three_names() -> None:
    s = Scheduler([node(f"n{i}", cpu=50) for i in range(5)] + [node("ok")])
    d = s.schedule(pod("p", cpu=100))
    assert d.node == "ok"
    [rejection] = d.rejections
    assert (rejection.filter, rejection.reason, rejection.count) == (
        "NodeResourcesFit",
        "Insufficient cpu",
        5,
    )
    assert len(rejection.nodes) == 3


# -- node selector, unschedulable ------------------------------------------------------


def test_node_selector_keeps_only_nodes_with_every_label() -> None:
    s = Scheduler(
        [
            node("ssd-a", labels={"disk": "ssd", "zone": "a"}),
            node("ssd-b", labels={"disk": "ssd", "zone": "b"}),
            node("hdd-a", labels={"disk": "hdd", "zone": "a"}),
        ]
    )
    d = s.schedule(pod("p", node_selector={"disk": "ssd", "zone": "b"}))
    assert d.node == "ssd-b"
    assert reasons(d) == {"node(s) didn't match Pod's node affinity/selector": 2}


def test_unschedulable_node_takes_only_pods_tolerating_the_unschedulable_taint() -> None:
    s = Scheduler([node("cordoned", unschedulable=True)])
    assert s.schedule(pod("plain")).node is None
    tolerant = Toleration(
        "node.kubernetes.io/unschedulable",
        TolerationOperator.EXISTS,
        effect=TaintEffect.NO_SCHEDULE,
    )
    assert s.schedule(pod("tolerant", tolerations=(tolerant,))).node == "cordoned"


# -- TaintToleration -----------------------------------------------------------------


@pytest.mark.parametrize("effect", [TaintEffect.NO_SCHEDULE, TaintEffect.NO_EXECUTE])
def test_hard_taints_keep_out_pods_that_do_not_tolerate_them(effect: TaintEffect) -> None:
    s = Scheduler([node("t", taints=(Taint("dedicated", "gpu", effect),))])
    d = s.schedule(pod("p"))
    assert d.node is None
    assert reasons(d) == {"node(s) had untolerated taint {dedicated: gpu}": 1}
    assert d.rejections[0].filter == "TaintToleration"


@pytest.mark.parametrize(
    ("toleration", "tolerated"),
    [
        (Toleration("dedicated", TolerationOperator.EQUAL, "gpu"), True),
        (Toleration("dedicated", TolerationOperator.EQUAL, "cpu"), False),
        (Toleration("dedicated", TolerationOperator.EXISTS), True),
        (Toleration("other", TolerationOperator.EXISTS), False),
        (Toleration("", TolerationOperator.EXISTS), True),
        (Toleration("dedicated", TolerationOperator.EXISTS, effect=TaintEffect.NO_SCHEDULE), True),
        (Toleration("dedicated", TolerationOperator.EXISTS, effect=TaintEffect.NO_EXECUTE), False),
    ],
)
def test_toleration_operators_and_effects_follow_kubernetes(
    toleration: Toleration, tolerated: bool
) -> None:
    s = Scheduler([node("t", taints=(Taint("dedicated", "gpu", TaintEffect.NO_SCHEDULE),))])
    assert s.schedule(pod("p", tolerations=(toleration,))).placed is tolerated


def test_malformed_tolerations_are_refused() -> None:
    with pytest.raises(SchedulingError):
        Toleration("", TolerationOperator.EQUAL, "x")
    with pytest.raises(SchedulingError):
        Toleration("k", TolerationOperator.EXISTS, "x")


def test_prefer_no_schedule_taint_is_avoided_but_not_forbidden() -> None:
    spot = Taint("spot", "true", TaintEffect.PREFER_NO_SCHEDULE)
    # "a-spot" would win the name tie-break; the taint score must outweigh it.
    s = Scheduler([node("a-spot", taints=(spot,)), node("b-plain")])
    d = s.schedule(pod("p"))
    assert d.node == "b-plain"
    assert d.scores["TaintToleration"] == 3 * 100
    only_spot = Scheduler([node("a-spot", taints=(spot,))])
    assert only_spot.schedule(pod("p")).node == "a-spot"
    tolerant = pod("q", tolerations=(Toleration("spot", TolerationOperator.EXISTS),))
    assert s.schedule(tolerant).node == "a-spot"


# -- MaxPerNode -----------------------------------------------------------------------


def test_max_per_node_counts_pods_of_the_same_group_only() -> None:
    s = Scheduler([node("n")])
    for i in range(2):
        assert s.schedule(pod(f"api-{i}", group="api", max_per_node=2)).placed
    d = s.schedule(pod("api-2", group="api", max_per_node=2))
    assert d.node is None
    assert d.rejections[0].filter == "MaxPerNode"
    assert s.schedule(pod("web-0", group="web", max_per_node=2)).node == "n"
    s.release("api-0")
    assert s.schedule(pod("api-3", group="api", max_per_node=2)).node == "n"


def test_max_per_node_needs_a_group() -> None:
    with pytest.raises(SchedulingError):
        PodSpec("p", max_per_node=1)


# -- PodTopologySpread ---------------------------------------------------------------


def spread_pod(name: str, skew: int = 1, **kw: Any) -> PodSpec:
    app = {"app": "api"}
    constraint = SpreadConstraint(skew, ZONE_LABEL, match_labels=app, **kw)
    return pod(name, labels=app, spread=(constraint,))


def zone_counts(s: Scheduler) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node_name in s.placements.values():
        zone = node_name.split("-")[0]
        counts[zone] = counts.get(zone, 0) + 1
    return counts


def test_do_not_schedule_spread_keeps_zones_within_max_skew() -> None:
    # Zone "a" has far more room, so resource scores alone would pile pods there.
    nodes = [zoned(f"a-{i}", "a", cpu=64000) for i in range(3)]
    nodes += [zoned("b-0", "b"), zoned("c-0", "c")]
    s = Scheduler(nodes)
    for i in range(6):
        assert s.schedule(spread_pod(f"p{i}")).placed
    assert zone_counts(s) == {"a": 2, "b": 2, "c": 2}


def test_spread_filter_names_nodes_in_overloaded_domains() -> None:
    s = Scheduler([zoned("a-0", "a"), zoned("b-0", "b")])
    s.bind(spread_pod("existing"), "a-0")
    d = s.schedule(spread_pod("p"))
    assert d.node == "b-0"
    assert reasons(d) == {"node(s) didn't match pod topology spread constraints": 1}
    assert d.rejections[0].nodes == ("a-0",)


def test_spread_counts_only_pods_matching_the_selector() -> None:
    s = Scheduler([zoned("a-0", "a"), zoned("b-0", "b", cpu=100_000)])
    for i in range(3):
        s.bind(pod(f"other-{i}", labels={"app": "web"}), "a-0")
    # Other apps in zone a do not count against api; b wins on free resources.
    assert s.schedule(spread_pod("p0")).node == "b-0"
    assert s.schedule(spread_pod("p1")).node == "a-0"


def test_nodes_without_the_topology_key_are_filtered_for_hard_spread() -> None:
    s = Scheduler([node("no-zone"), zoned("a-0", "a")])
    d = s.schedule(spread_pod("p"))
    assert d.node == "a-0"
    assert reasons(d) == {
        "node(s) didn't match pod topology spread constraints (missing required label)": 1
    }


def test_spread_skew_is_measured_against_domains_the_selector_allows() -> None:
    nodes = [
        node("a-0", labels={ZONE_LABEL: "a", "disk": "ssd"}),
        node("b-0", labels={ZONE_LABEL: "b", "disk": "ssd"}),
        node("c-0", labels={ZONE_LABEL: "c", "disk": "hdd"}),
    ]
    s = Scheduler(nodes)
    app = {"app": "api"}
    constraint = SpreadConstraint(1, ZONE_LABEL, match_labels=app)
    for i in range(4):
        p = pod(f"p{i}", labels=app, spread=(constraint,), node_selector={"disk": "ssd"})
        assert s.schedule(p).placed
    # Zone c (count 0) is not eligible, so it does not hold a and b at a skew of 1.
    assert zone_counts(s) == {"a": 2, "b": 2}


def test_spread_counts_only_pods_on_nodes_the_selector_allows() -> None:
    s = Scheduler(
        [
            node("a-ssd", labels={ZONE_LABEL: "a", "disk": "ssd"}),
            node("a-hdd", labels={ZONE_LABEL: "a", "disk": "hdd"}),
            node("b-ssd", labels={ZONE_LABEL: "b", "disk": "ssd"}),
        ]
    )
    app = {"app": "api"}
    constraint = SpreadConstraint(1, ZONE_LABEL, match_labels=app)
    ssd = {"disk": "ssd"}
    # Counted both ways: pods bound before the constraint is first seen, and after.
    s.bind(pod("old-0", labels=app), "a-hdd")
    assert s.schedule(pod("probe", spread=(constraint,), node_selector=ssd)).placed
    s.release("probe")
    s.bind(pod("old-1", labels=app), "a-hdd")
    p = pod("p", labels=app, spread=(constraint,), node_selector=ssd)
    # nodeAffinityPolicy=Honor: the pods on a-hdd do not count, so zone a is not ahead.
    assert s.schedule(p).node == "a-ssd"


def test_min_domains_treats_missing_domains_as_empty() -> None:
    s = Scheduler([zoned("a-0", "a"), zoned("b-0", "b")])
    for i in range(2):
        assert s.schedule(spread_pod(f"p{i}", min_domains=3)).placed
    d = s.schedule(spread_pod("p2", min_domains=3))
    assert d.node is None
    assert reasons(d) == {"node(s) didn't match pod topology spread constraints": 2}


def test_schedule_anyway_spread_prefers_the_emptier_domain_but_never_blocks() -> None:
    soft = SpreadConstraint(
        1, ZONE_LABEL, WhenUnsatisfiable.SCHEDULE_ANYWAY, match_labels={"app": "api"}
    )
    s = Scheduler([zoned("a-0", "a", cpu=64000), zoned("b-0", "b")])
    s.bind(pod("existing", labels={"app": "api"}), "a-0")
    d = s.schedule(pod("p", labels={"app": "api"}, spread=(soft,)))
    assert d.node == "b-0"
    assert d.scores["PodTopologySpread"] == 2 * 100
    only_a = Scheduler([zoned("a-0", "a")])
    only_a.bind(pod("existing", labels={"app": "api"}), "a-0")
    assert only_a.schedule(pod("p", labels={"app": "api"}, spread=(soft,))).node == "a-0"


def test_released_pods_stop_counting_for_spread() -> None:
    s = Scheduler([zoned("a-0", "a"), zoned("b-0", "b")])
    assert s.schedule(spread_pod("p0")).placed
    first = s.placements["p0"]
    assert s.schedule(spread_pod("p1")).placed
    assert s.release("p0") == first
    assert s.schedule(spread_pod("p2")).node == first


# -- scores and tie-break --------------------------------------------------------------


def test_least_allocated_prefers_the_emptier_node() -> None:
    s = Scheduler([node("a"), node("b")])
    s.bind(pod("busy", cpu=2000, mem=4 * GIB), "a")
    assert s.schedule(pod("p")).node == "b"


def test_scores_follow_releases_as_well_as_binds() -> None:
    s = Scheduler([node("a"), node("b")])
    s.bind(pod("busy", cpu=2000, mem=4 * GIB), "a")
    assert s.schedule(pod("p")).node == "b"
    s.release("busy")
    assert s.schedule(pod("q")).node == "a"


def test_most_allocated_packs_onto_the_fuller_node() -> None:
    s = Scheduler([node("a"), node("b")], SchedulerProfile(FitStrategy.MOST_ALLOCATED))
    s.bind(pod("busy", cpu=2000, mem=4 * GIB), "b")
    d = s.schedule(pod("p"))
    assert d.node == "b"
    # (2100/4000, 5/8 of memory) -> cpu 52, memory 62 -> (52 + 62) // 2
    assert d.scores["NodeResourcesFit"] == 57


def test_requested_to_capacity_ratio_follows_its_shape() -> None:
    packing = SchedulerProfile(
        FitStrategy.REQUESTED_TO_CAPACITY_RATIO, shape=((0, 0), (100, 10)), balanced_weight=0
    )
    s = Scheduler([node("a"), node("b")], packing)
    s.bind(pod("busy", cpu=2000, mem=4 * GIB), "b")
    d = s.schedule(pod("p", cpu=0, mem=0))
    assert d.node == "b"
    # Request-less pods count as 100m / 200 MiB: cpu 2100/4000 -> 52, memory 4.2/8 GiB -> 52.
    assert d.scores["NodeResourcesFit"] == 52
    assert d.scores["NodeResourcesBalancedAllocation"] == 0


def test_balanced_allocation_prefers_even_cpu_and_memory_use() -> None:
    only_balance = SchedulerProfile(fit_weight=0)
    s = Scheduler([node("cpu-heavy"), node("even")], only_balance)
    s.bind(pod("x", cpu=3000, mem=0), "cpu-heavy")
    s.bind(pod("y", cpu=1000, mem=2 * GIB), "even")
    d = s.schedule(pod("p", cpu=1000, mem=2 * GIB))
    assert d.node == "even"
    # even: cpu 2000/4000, memory 4/8 GiB -> no deviation
    assert d.scores["NodeResourcesBalancedAllocation"] == 100


def test_score_weights_scale_each_plugin() -> None:
    profile = SchedulerProfile(fit_weight=5, balanced_weight=2)
    d = Scheduler([node("a")], profile).schedule(pod("p", cpu=2000, mem=4 * GIB))
    assert d.scores == {
        "NodeResourcesFit": 5 * 50,
        "NodeResourcesBalancedAllocation": 2 * 100,
        "TaintToleration": 3 * 100,
        "PodTopologySpread": 2 * 100,
    }
    assert d.score == sum(d.scores.values())


def test_equal_scores_go_to_the_smallest_node_name_whatever_the_order() -> None:
    names = ["n3", "n1", "n2"]
    for order in (names, list(reversed(names))):
        s = Scheduler([node(n) for n in order])
        assert s.schedule(pod("p")).node == "n1"


def test_same_inputs_give_the_same_placements() -> None:
    def run() -> dict[str, str]:
        nodes = [
            zoned(f"{'abc'[i % 3]}-{i}", "abc"[i % 3], cpu=2000 + 100 * (i % 7)) for i in range(30)
        ]
        s = Scheduler(nodes)
        for i in range(60):
            s.schedule(spread_pod(f"p{i}", skew=2))
        return dict(s.placements)

    first = run()
    assert len(first) == 60
    assert run() == first


# -- sampling ------------------------------------------------------------------------


def test_large_clusters_score_a_rotating_sample_of_nodes() -> None:
    s = Scheduler([node(f"n{i:03d}") for i in range(200)])
    first = s.schedule(pod("p0"))
    # 200 nodes: adaptive 49% is 98, raised to the 100-node floor.
    assert first.nodes_evaluated == 100 and first.feasible == 100
    assert first.node == "n000"
    second = s.schedule(pod("p1"))
    assert second.node == "n100"
    third = s.schedule(pod("p2"))
    assert third.node == "n001"


def test_rejections_count_only_the_nodes_walked_even_when_the_walk_wraps() -> None:
    names = [f"n{i:03d}" for i in range(200)]
    tainted = {n for i, n in enumerate(names) if i % 4 == 0}
    taint = (Taint("dedicated", "x"),)
    s = Scheduler([node(n, taints=taint if n in tainted else ()) for n in names])
    start = 0
    for i in range(3):
        # Reference walk: from `start`, wrapping, until 100 untainted nodes are seen.
        walked: list[str] = []
        passing = 0
        while passing < 100:
            name = names[(start + len(walked)) % len(names)]
            walked.append(name)
            passing += name not in tainted
        d = s.schedule(pod(f"p{i}"))
        assert d.nodes_evaluated == len(walked)
        assert [(r.count, r.nodes) for r in d.rejections] == [
            (len(tainted & set(walked)), tuple(n for n in walked if n in tainted)[:3])
        ]
        if i == 1:
            assert start + len(walked) > len(names)  # this walk wraps past n199
        start = (start + len(walked)) % len(names)


def test_percentage_of_nodes_to_score_100_scores_every_node() -> None:
    s = Scheduler(
        [node(f"n{i:03d}") for i in range(300)], SchedulerProfile(percentage_of_nodes_to_score=100)
    )
    assert s.schedule(pod("p")).nodes_evaluated == 300


def test_sampling_follows_the_kubernetes_adaptive_percentage() -> None:
    s = Scheduler([node(f"n{i:04d}", max_pods=1) for i in range(5000)])
    d = s.schedule(pod("p"))
    assert (d.nodes_evaluated, d.feasible) == (500, 500)


# -- state and records ---------------------------------------------------------------


def test_release_returns_resources_and_unknown_pods_are_refused() -> None:
    s = Scheduler([node("n", cpu=1000)])
    assert s.schedule(pod("a", cpu=1000)).placed
    assert not s.schedule(pod("b", cpu=1000)).placed
    assert s.release("a") == "n"
    assert s.usage("n") == NodeUsage(0, 0, 0)
    assert s.schedule(pod("b", cpu=1000)).placed
    with pytest.raises(SchedulingError):
        s.release("missing")
    with pytest.raises(SchedulingError):
        s.schedule(pod("b"))


def test_nodes_can_join_and_empty_nodes_can_leave() -> None:
    s = Scheduler()
    d = s.schedule(pod("p"))
    assert d.node is None and d.message == "0/0 nodes are available."
    s.add_node(node("n"))
    with pytest.raises(SchedulingError):
        s.add_node(node("n"))
    assert s.schedule(pod("q")).node == "n"
    with pytest.raises(SchedulingError):
        s.remove_node("n")
    s.release("q")
    s.remove_node("n")
    assert not s.schedule(pod("r")).placed


def test_decision_record_is_json_serialisable() -> None:
    s = Scheduler([node("full", cpu=10), node("ok")])
    record = s.schedule(pod("p")).to_dict()
    again = json.loads(json.dumps(record))
    assert again["node"] == "ok"
    assert again["rejections"] == [
        {"filter": "NodeResourcesFit", "reason": "Insufficient cpu", "count": 1, "nodes": ["full"]}
    ]
    assert again["scores"]["NodeResourcesFit"] > 0
    assert "placed on ok" in again["message"]


@pytest.mark.parametrize(
    ("text", "millis"), [("250m", 250), ("2", 2000), ("0.5", 500), ("1.5", 1500)]
)
def test_cpu_quantities_become_millicores(text: str, millis: int) -> None:
    assert parse_cpu(text) == millis


@pytest.mark.parametrize(
    ("text", "size"), [("512Mi", 512 * 2**20), ("1Gi", GIB), ("1G", 10**9), ("1000", 1000)]
)
def test_memory_quantities_become_bytes(text: str, size: int) -> None:
    assert parse_memory(text) == size


@pytest.mark.parametrize("text", ["", "1.5m", "abc", "-1", "2Mi"])
def test_bad_cpu_quantities_are_refused(text: str) -> None:
    with pytest.raises(SchedulingError):
        parse_cpu(text)


def test_bad_profiles_are_refused() -> None:
    with pytest.raises(SchedulingError):
        SchedulerProfile(percentage_of_nodes_to_score=0)
    with pytest.raises(SchedulingError):
        SchedulerProfile(shape=((50, 5), (10, 1)))
    with pytest.raises(SchedulingError):
        SchedulerProfile(cpu_weight=0, memory_weight=0)


# -- against a brute-force reference -----------------------------------------------------

APPS = ({"app": "api"}, {"app": "web"})
ZONES = ("a", "b", "c")
NODE_SPECS = st.builds(
    lambda cpu, zone, ssd, tainted, cordoned: (cpu, zone, ssd, tainted, cordoned),
    st.sampled_from([500, 1000, 2000]),
    st.sampled_from((*ZONES, None)),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
POD_SPECS = st.builds(
    lambda cpu, app, ssd, tolerate, spread, cap: (cpu, app, ssd, tolerate, spread, cap),
    st.sampled_from([0, 100, 300, 700]),
    st.sampled_from([0, 1]),
    st.booleans(),
    st.booleans(),
    st.sampled_from([None, 1, 2]),
    st.sampled_from([None, 1, 2]),
)
OPS = st.lists(st.one_of(POD_SPECS, st.integers(0, 30)), min_size=10, max_size=40)


def build_node(
    i: int, cpu: int, zone: str | None, ssd: bool, tainted: bool, cordoned: bool
) -> NodeSpec:
    labels = {"disk": "ssd" if ssd else "hdd"}
    if zone is not None:
        labels[ZONE_LABEL] = zone
    taints = (Taint("dedicated", "x"),) if tainted else ()
    return NodeSpec(
        f"n{i:02d}", cpu, 8 * GIB, 2, labels=labels, taints=taints, unschedulable=cordoned
    )


def reference_fits(
    p: PodSpec, n: NodeSpec, placed: dict[str, tuple[PodSpec, NodeSpec]], nodes: list[NodeSpec]
) -> bool:
    """Every filter, written plainly over the whole state."""
    if n.unschedulable and not p.tolerations:
        return False
    if any(n.labels.get(k) != v for k, v in p.node_selector.items()):
        return False
    if n.taints and not p.tolerations:
        return False
    here = [q for q, m in placed.values() if m.name == n.name]
    if sum(q.cpu_millis for q in here) + p.cpu_millis > n.cpu_millis or len(here) >= n.max_pods:
        return False
    if p.max_per_node is not None and sum(q.group == p.group for q in here) >= p.max_per_node:
        return False
    for c in p.spread:
        if ZONE_LABEL not in n.labels:
            return False
        allowed = [
            m for m in nodes if all(m.labels.get(k) == v for k, v in p.node_selector.items())
        ]
        domains = {m.labels[ZONE_LABEL] for m in allowed if ZONE_LABEL in m.labels}
        counts = dict.fromkeys(domains, 0)
        for q, m in placed.values():
            if (
                m in allowed
                and ZONE_LABEL in m.labels
                and all(q.labels.get(k) == v for k, v in c.match_labels.items())
            ):
                counts[m.labels[ZONE_LABEL]] = counts.get(m.labels[ZONE_LABEL], 0) + 1
        lowest = min((counts[d] for d in domains), default=0)
        if counts.get(n.labels[ZONE_LABEL], 0) + 1 - lowest > c.max_skew:
            return False
    return True


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.lists(NODE_SPECS, min_size=1, max_size=5), OPS)
def test_placements_match_a_brute_force_reference(
    node_specs: list[tuple[int, str | None, bool, bool, bool]],
    ops: list[tuple[int, int, bool, bool, int | None, int | None] | int],
) -> None:
    nodes = [build_node(i, *spec) for i, spec in enumerate(node_specs)]
    by_name = {n.name: n for n in nodes}
    s = Scheduler(nodes)
    placed: dict[str, tuple[PodSpec, NodeSpec]] = {}
    tolerate_all = (Toleration("", TolerationOperator.EXISTS),)
    for step, op in enumerate(ops):
        if isinstance(op, int):
            if placed:
                name = sorted(placed)[op % len(placed)]
                assert s.release(name) == placed.pop(name)[1].name
            continue
        cpu, app, ssd, tolerate, skew, cap = op
        labels = APPS[app]
        p = PodSpec(
            f"p{step}",
            cpu,
            GIB,
            labels=labels,
            node_selector={"disk": "ssd"} if ssd else {},
            tolerations=tolerate_all if tolerate else (),
            spread=(SpreadConstraint(skew, ZONE_LABEL, match_labels=labels),) if skew else (),
            group=labels["app"],
            max_per_node=cap,
        )
        fitting = {n.name for n in nodes if reference_fits(p, n, placed, nodes)}
        d = s.schedule(p)
        assert d.nodes_evaluated == len(nodes)
        assert d.feasible == len(fitting)
        assert sum(r.count for r in d.rejections) == len(nodes) - len(fitting)
        if fitting:
            assert d.node in fitting
            placed[p.name] = (p, by_name[d.node])
        else:
            assert d.node is None
    for n in nodes:
        here = [q for q, m in placed.values() if m.name == n.name]
        assert s.usage(n.name) == NodeUsage(
            sum(q.cpu_millis for q in here), GIB * len(here), len(here)
        )
