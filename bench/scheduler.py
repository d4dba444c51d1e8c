"""Scheduler placement rate: 10,000 pods onto 5,000 nodes (BENCHMARKS.md, control plane).

``python -m bench.scheduler [--rounds N] [--pods P] [--nodes M]`` runs these cases,
interleaved, and reports the median pods/s of each:

* basic: the shape of kube-scheduler's scheduler_perf "SchedulingBasic" case (nodes of
  4 CPU / 32 GiB / 110 pods, pods requesting 100m / 500 MiB, no constraints);
* mixed: the same nodes over 3 zones, 10% tainted NoSchedule and 5% PreferNoSchedule,
  pods of 100 services (at most 2 per node) spread across zones (DoNotSchedule, max
  skew 1), a fifth also spread softly across hosts, 10% with a node selector, 5%
  tolerating the taint;
* basic-all: basic with every node scored (sampling off), on a tenth of the pods.

The Kubernetes scheduler's CI floor for 10k pods onto 5k nodes is about 700-800 pods/s;
our goal is >= 1,000. Figures drift with the machine's load: compare within one run.
"""

from __future__ import annotations

import argparse
import statistics
import time

from control.scheduler import (
    HOSTNAME_LABEL,
    ZONE_LABEL,
    NodeSpec,
    PodSpec,
    Scheduler,
    SchedulerProfile,
    SpreadConstraint,
    Taint,
    TaintEffect,
    Toleration,
    TolerationOperator,
    WhenUnsatisfiable,
)

GIB = 2**30
MIB = 2**20


def basic_nodes(count: int) -> list[NodeSpec]:
    return [
        NodeSpec(
            f"node-{i:05d}",
            4000,
            32 * GIB,
            110,
            labels={HOSTNAME_LABEL: f"node-{i:05d}", ZONE_LABEL: "zone-a"},
        )
        for i in range(count)
    ]


def basic_pods(count: int) -> list[PodSpec]:
    return [PodSpec(f"pod-{i:05d}", 100, 500 * MIB) for i in range(count)]


def mixed_nodes(count: int) -> list[NodeSpec]:
    nodes = []
    for i in range(count):
        name = f"node-{i:05d}"
        labels = {HOSTNAME_LABEL: name, ZONE_LABEL: f"zone-{'abc'[i % 3]}"}
        if i % 4 == 0:
            labels["disktype"] = "ssd"
        taints: tuple[Taint, ...] = ()
        if i % 10 == 1:
            taints = (Taint("dedicated", "batch", TaintEffect.NO_SCHEDULE),)
        elif i % 20 == 2:
            taints = (Taint("spot", "true", TaintEffect.PREFER_NO_SCHEDULE),)
        nodes.append(NodeSpec(name, 4000, 32 * GIB, 110, labels=labels, taints=taints))
    return nodes


def mixed_pods(count: int) -> list[PodSpec]:
    tolerate = (
        Toleration("dedicated", TolerationOperator.EQUAL, "batch", TaintEffect.NO_SCHEDULE),
    )
    pods = []
    for i in range(count):
        service = f"svc-{i % 100:03d}"
        labels = {"app": service}
        spread = [SpreadConstraint(1, ZONE_LABEL, match_labels=labels)]
        if i % 5 == 0:
            spread.append(
                SpreadConstraint(
                    1, HOSTNAME_LABEL, WhenUnsatisfiable.SCHEDULE_ANYWAY, match_labels=labels
                )
            )
        pods.append(
            PodSpec(
                f"pod-{i:05d}",
                100 + 50 * (i % 4),
                (256 + 128 * (i % 5)) * MIB,
                labels=labels,
                node_selector={"disktype": "ssd"} if i % 10 == 3 else {},
                tolerations=tolerate if i % 20 == 7 else (),
                spread=tuple(spread),
                group=service,
                max_per_node=2,
            )
        )
    return pods


def run_once(
    nodes: list[NodeSpec], pods: list[PodSpec], profile: SchedulerProfile | None = None
) -> tuple[float, int, float]:
    """Seconds to place every pod, how many were placed, mean nodes evaluated per pod."""
    scheduler = Scheduler(nodes, profile)
    placed = 0
    evaluated = 0
    started = time.perf_counter()
    for pod in pods:
        decision = scheduler.schedule(pod)
        placed += decision.placed
        evaluated += decision.nodes_evaluated
    elapsed = time.perf_counter() - started
    return elapsed, placed, evaluated / max(len(pods), 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scheduler")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=5_000)
    args = parser.parse_args(argv)

    every_node = SchedulerProfile(percentage_of_nodes_to_score=100)
    # name: (nodes, pods, profile); "basic-all" scores every node (no sampling) on a
    # tenth of the pods, the side-by-side reference for what sampling buys.
    cases: dict[str, tuple[list[NodeSpec], list[PodSpec], SchedulerProfile | None]] = {
        "basic": (basic_nodes(args.nodes), basic_pods(args.pods), None),
        "basic-all": (basic_nodes(args.nodes), basic_pods(max(args.pods // 10, 1)), every_node),
        "mixed": (mixed_nodes(args.nodes), mixed_pods(args.pods), None),
    }
    rates: dict[str, list[float]] = {name: [] for name in cases}
    print(f"scheduler: {args.pods} pods onto {args.nodes} nodes, {args.rounds} rounds")
    for round_no in range(1, args.rounds + 1):
        for name, (nodes, pods, profile) in cases.items():
            elapsed, placed, evaluated = run_once(nodes, pods, profile)
            rate = len(pods) / elapsed
            rates[name].append(rate)
            print(
                f"  round {round_no} {name:9s}: {rate:8.0f} pods/s  "
                f"({placed}/{len(pods)} placed, {evaluated:.0f} nodes evaluated per pod, "
                f"{elapsed:.2f} s)"
            )
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, median in medians.items():
        print(f"{name:9s} median {median:8.0f} pods/s  (x{median / medians['basic']:.2f} basic)")
    print(
        "goal: >= 1000 pods/s for basic; kube-scheduler's CI floor for this size is about "
        "700-800 pods/s (published figure, not measured here)"
    )


if __name__ == "__main__":
    main()
