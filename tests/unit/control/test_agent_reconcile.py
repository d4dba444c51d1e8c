"""The node book and the reconcile step, sans-IO: nodes register, the autoscaler's
count becomes placements through the scheduler, load comes from agent reports."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from control.nodes import (
    AgentReport,
    Assignment,
    InstanceReport,
    NodeBook,
    NodeError,
    NodeRegistration,
    ServiceSpec,
)
from control.reconcile import Reconciler


def spec(**kw: object) -> ServiceSpec:
    body: dict[str, object] = {
        "command": ["app"],
        "cpu": "500m",
        "memory": "256Mi",
        "min_replicas": 1,
        "max_replicas": 4,
        "autoscaling": {"target": 5, "stable_window": "6s", "scale_down_stabilization": "5s"},
    }
    body.update(kw)
    return ServiceSpec.model_validate(body)


def node(name: str, cpu: str = "2000m", zone: str = "a") -> NodeRegistration:
    return NodeRegistration(id=name, cpu=cpu, memory="2Gi", zone=zone)


def report(book: NodeBook, name: str, busy: dict[str, float]) -> AgentReport:
    index, _ = book.assignments(name)
    items = [
        InstanceReport(id=i, state="running", requests=b * 10, busy_seconds=b)
        for i, b in busy.items()
    ]
    return AgentReport(node=name, index=index, instances=items)


def feed(rec: Reconciler, book: NodeBook, agent: AgentReport, now: float) -> None:
    book.report(agent, now)
    rec.observe(agent, now)


def test_spec_refuses_bad_quantities_and_inverted_bounds() -> None:
    with pytest.raises(ValidationError, match="cpu"):
        spec(cpu="lots")
    with pytest.raises(ValidationError, match="min_replicas"):
        spec(min_replicas=5, max_replicas=2)
    with pytest.raises(ValidationError, match="environment variable"):
        spec(env={"1BAD": "x"})


def test_first_step_places_min_replicas_and_records_why() -> None:
    book = NodeBook()
    book.register(node("n1"), 0.0)
    rec = Reconciler(book)
    rec.set_spec("ratings", spec(min_replicas=2))
    made = rec.step(1.0, 1000.0)
    assert [(d.source, d.action) for d in made] == [
        ("autoscaler", "scale"),
        ("scheduler", "place"),
        ("scheduler", "place"),
    ]
    assert "raised to min_replicas 2" in made[0].reason
    index, assigned = book.assignments("n1")
    assert [a.id for a in assigned] == ["ratings-1", "ratings-2"]
    assert index > 0
    assert book.scheduler.usage("n1").cpu_millis == 1000


def test_rising_concurrency_adds_instances_across_nodes() -> None:
    book = NodeBook()
    book.register(node("n1", cpu="1000m"), 0.0)
    book.register(node("n2", cpu="1000m", zone="b"), 0.0)
    rec = Reconciler(book)
    rec.set_spec("ratings", spec())
    rec.step(0.0, 0.0)
    (first,) = [a.id for a in book.instances_of("ratings")]
    where = book.node_of(first)
    assert where is not None
    busy = 0.0
    for t in range(1, 4):
        busy += 15.0  # 15 s of request time per second: concurrency 15, target 5
        feed(rec, book, report(book, where, {first: busy}), float(t))
    made = rec.step(3.5, 3.5)
    assert made[0].action == "scale" and made[0].reason.startswith("1 -> 3")
    placed = {book.node_of(a.id) for a in book.instances_of("ratings")}
    assert placed == {"n1", "n2"}


def test_idle_load_removes_newest_instances_after_stabilisation() -> None:
    book = NodeBook()
    book.register(node("n1"), 0.0)
    rec = Reconciler(book)
    rec.set_spec("ratings", spec(min_replicas=1))
    rec.step(0.0, 0.0)
    for a in book.instances_of("ratings")[:1]:
        busy = 0.0
        for t in range(1, 4):
            busy += 15.0
            feed(rec, book, report(book, "n1", {a.id: busy}), float(t))
    rec.step(3.5, 3.5)
    assert len(book.instances_of("ratings")) == 3
    ids = [a.id for a in book.instances_of("ratings")]
    removed_at = None
    for t in range(4, 40):
        counters = dict.fromkeys(ids, 45.0)
        feed(
            rec, book, report(book, "n1", {i: c for i, c in counters.items() if book.node_of(i)}), t
        )
        made = rec.step(t + 0.5, t + 0.5)
        if any(d.action == "remove" for d in made):
            removed_at = t
            break
    assert removed_at is not None and removed_at >= 8  # the 5 s stabilisation held it
    assert [a.id for a in book.instances_of("ratings")] == ids[:1]
    assert book.scheduler.usage("n1").cpu_millis == 500


def test_unschedulable_instance_is_recorded_not_assigned() -> None:
    book = NodeBook()
    book.register(node("n1", cpu="600m"), 0.0)
    rec = Reconciler(book)
    rec.set_spec("ratings", spec(min_replicas=2))
    made = rec.step(0.0, 0.0)
    assert [d.action for d in made] == ["scale", "place", "unschedulable"]
    assert "Insufficient cpu" in made[-1].reason
    assert len(book.instances_of("ratings")) == 1
    assert rec.step(1.0, 1.0) == []  # the same failure is not recorded again
    book.register(node("n2"), 2.0)
    made = rec.step(2.0, 2.0)
    assert [d.action for d in made] == ["scale", "place"]
    assert "ratings-2 on n2" in made[1].reason


def test_lapsed_node_releases_its_instances_and_they_move() -> None:
    book = NodeBook()
    book.register(node("n1"), 0.0)
    rec = Reconciler(book, node_ttl=10.0)
    rec.set_spec("ratings", spec())
    rec.step(0.0, 0.0)
    book.register(node("n2"), 5.0)
    book.report(report(book, "n2", {}), 12.0)
    made = rec.step(12.0, 12.0)
    assert [d.action for d in made] == ["evict", "scale", "place"]
    assert book.nodes["n1"].down
    assert [book.node_of(a.id) for a in book.instances_of("ratings")] == ["n2"]
    with pytest.raises(NodeError, match="register it again"):
        book.report(report(book, "n2", {}).model_copy(update={"node": "n1"}), 13.0)


def test_deleted_spec_stops_every_instance() -> None:
    book = NodeBook()
    book.register(node("n1"), 0.0)
    rec = Reconciler(book)
    rec.set_spec("ratings", spec(min_replicas=2))
    rec.step(0.0, 0.0)
    assert rec.remove_spec("ratings")
    made = rec.step(1.0, 1.0)
    assert [d.action for d in made] == ["remove", "remove"]
    assert book.assignments("n1")[1] == []
    assert book.scheduler.usage("n1").cpu_millis == 0


def test_alert_floor_raises_the_count() -> None:
    book = NodeBook()
    book.register(node("n1"), 0.0)
    rec = Reconciler(book)
    rec.set_spec("ratings", spec())
    made = rec.step(0.0, 0.0, {"ratings": 3})
    assert "alert floor 3" in made[0].reason
    assert len(book.instances_of("ratings")) == 3


def test_restarted_sidecar_counters_are_not_read_as_negative_load() -> None:
    book = NodeBook()
    book.register(node("n1"), 0.0)
    rec = Reconciler(book)
    rec.set_spec("ratings", spec())
    rec.step(0.0, 0.0)
    (a,) = book.instances_of("ratings")
    feed(rec, book, report(book, "n1", {a.id: 100.0}), 1.0)
    feed(rec, book, report(book, "n1", {a.id: 1.0}), 2.0)
    feed(rec, book, report(book, "n1", {a.id: 2.0}), 3.0)
    verdict = rec.autoscalers["ratings"].evaluate(3.5, 1)
    assert verdict.stable_value == pytest.approx(1.0)


def test_reregistering_a_busy_node_with_new_capacity_is_refused() -> None:
    book = NodeBook()
    book.register(node("n1"), 0.0)
    book.place(Assignment(id="ratings-1", service="ratings", spec=spec()))
    book.register(node("n1"), 1.0)  # the same: an agent restart, kept
    assert [a.id for a in book.assignments("n1")[1]] == ["ratings-1"]
    with pytest.raises(NodeError, match="drain it"):
        book.register(node("n1", cpu="4000m"), 2.0)


def test_rps_metric_reads_the_request_counter_rate() -> None:
    book = NodeBook()
    book.register(node("n1"), 0.0)
    rec = Reconciler(book)
    rec.set_spec("ratings", spec(autoscaling={"metric": "rps", "target": 100, "stable_window": 6}))
    rec.step(0.0, 0.0)
    (a,) = book.instances_of("ratings")
    for t in range(1, 4):
        agent = AgentReport(
            node="n1",
            index=book.assignments("n1")[0],
            instances=[
                InstanceReport(id=a.id, state="running", requests=250.0 * t, busy_seconds=0.0)
            ],
        )
        feed(rec, book, agent, float(t))
    verdict = rec.autoscalers["ratings"].evaluate(3.5, 1)
    assert verdict.stable_value == pytest.approx(250.0)
    assert verdict.desired == 3


def test_reports_of_unassigned_instances_are_ignored() -> None:
    book = NodeBook()
    book.register(node("n1"), 0.0)
    rec = Reconciler(book)
    rec.set_spec("ratings", spec())
    stray = AgentReport(
        node="n1", index=0, instances=[InstanceReport(id="ghost-9", state="running")]
    )
    feed(rec, book, stray, 1.0)
    assert book.nodes["n1"].reports == {}
    assert book.report_of("ghost-9") is None
