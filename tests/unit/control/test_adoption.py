"""Re-adoption after a control-plane restart, sans-IO: a node that registers again
carrying the instances it runs gets them back as its assignments, they count
against the spec's replicas, and the reconciler neither restarts nor duplicates
them; orphans (no spec) are removed as before."""

from __future__ import annotations

from control.nodes import Assignment, NodeBook, NodeRegistration, ServiceSpec
from control.reconcile import Reconciler


def spec(replicas: int = 2) -> ServiceSpec:
    return ServiceSpec(
        command=["app"], cpu="500m", memory="256Mi", min_replicas=replicas, max_replicas=replicas
    )


def running(*ids: str, service: str = "web", replicas: int = 2) -> list[Assignment]:
    return [Assignment(id=i, service=service, spec=spec(replicas)) for i in ids]


def node(name: str, carried: list[Assignment] | None = None) -> NodeRegistration:
    return NodeRegistration(id=name, cpu="2000m", memory="2Gi", zone="a", instances=carried or [])


def restarted(specs: dict[str, ServiceSpec], grace: float = 10.0) -> tuple[NodeBook, Reconciler]:
    book = NodeBook()
    rec = Reconciler(book)
    rec.restore(specs, now=0.0, grace=grace)
    return book, rec


def test_carried_instances_become_the_nodes_assignments_before_the_answer() -> None:
    book = NodeBook()
    record = book.register(node("n1", running("web-1", "web-2")), now=0.0)
    assert record.adopted == ["web-1", "web-2"]
    assert record.refused == {}
    _, assigned = book.assignments("n1")
    assert [a.id for a in assigned] == ["web-1", "web-2"]
    assert book.scheduler.usage("n1").cpu_millis == 1000
    # What the node view shows is the node, not the list it carried.
    assert record.registration.instances == []
    assert book.node_of("web-2") == "n1"


def test_adopted_instances_count_against_replicas_so_nothing_is_started_or_stopped() -> None:
    book, rec = restarted({"web": spec(2)}, grace=5.0)
    book.register(node("n1", running("web-1", "web-2")), now=1.0)
    index, _ = book.assignments("n1")
    assert rec.step(now=2.0, wall=0.0) == []  # settling
    assert rec.step(now=6.0, wall=0.0) == []  # settled: 2 wanted, 2 adopted
    assert book.assignments("n1") == (index, running("web-1", "web-2"))


def test_scaling_after_adoption_adds_exactly_one_with_a_fresh_id() -> None:
    book, rec = restarted({"web": spec(2)}, grace=0.0)
    book.register(node("n1", running("web-1", "web-2")), now=1.0)
    rec.set_spec("web", spec(3))
    decisions = rec.step(now=2.0, wall=0.0)
    assert [d.action for d in decisions] == ["scale", "place"]
    assert [a.id for a in book.instances_of("web")] == ["web-1", "web-2", "web-3"]


def test_scaling_waits_for_the_grace_so_the_first_node_back_gets_no_extra_copies() -> None:
    book, rec = restarted({"web": spec(2)}, grace=5.0)
    book.register(node("n1", running("web-1")), now=1.0)
    assert rec.settling(4.0)
    assert rec.step(now=4.0, wall=0.0) == []
    book.register(node("n2", running("web-2")), now=4.5)
    assert not rec.settling(5.0)
    assert rec.step(now=5.0, wall=0.0) == []
    assert {book.node_of("web-1"), book.node_of("web-2")} == {"n1", "n2"}


def test_a_fresh_control_plane_without_stored_specs_does_not_wait() -> None:
    book, rec = restarted({}, grace=30.0)
    assert not rec.settling(0.0)
    book.register(node("n1"), now=0.0)
    rec.set_spec("web", spec(1))
    assert [d.action for d in rec.step(now=0.1, wall=0.0)] == ["scale", "place"]


def test_an_adopted_instance_without_a_spec_is_removed_as_an_orphan() -> None:
    book, rec = restarted({"web": spec(1)}, grace=5.0)
    book.register(node("n1", running("web-1") + running("gone-3", service="gone")), now=1.0)
    decisions = rec.step(now=1.5, wall=0.0)  # orphans go even while settling
    assert [(d.subject, d.action) for d in decisions] == [("gone", "remove")]
    assert "the service spec was deleted" in decisions[0].reason
    assert [a.id for a in book.assignments("n1")[1]] == ["web-1"]


def test_an_instance_assigned_to_another_node_or_listed_twice_is_refused() -> None:
    book = NodeBook()
    book.register(node("n1", running("web-1")), now=0.0)
    record = book.register(node("n2", running("web-1", "web-2", "web-2")), now=0.0)
    assert record.adopted == ["web-2"]
    assert record.refused == {"web-1": "assigned to node n1", "web-2": "listed twice"}
    assert book.node_of("web-1") == "n1"
    assert book.scheduler.usage("n2").cpu_millis == 500


def test_registering_again_with_what_is_already_assigned_changes_nothing() -> None:
    book = NodeBook()
    book.register(node("n1", running("web-1")), now=0.0)
    index, assigned = book.assignments("n1")
    record = book.register(node("n1", running("web-1")), now=3.0)
    assert record.adopted == ["web-1"]
    assert book.assignments("n1") == (index, assigned)
    assert book.scheduler.usage("n1").cpu_millis == 500
    assert record.last_seen == 3.0


def test_a_lapsed_node_that_comes_back_brings_its_instances_back() -> None:
    book = NodeBook()
    book.register(node("n1", running("web-1")), now=0.0)
    assert book.lapse(now=100.0, ttl=15.0) == ["web-1"]
    record = book.register(node("n1", running("web-1")), now=101.0)
    assert not record.down
    assert record.adopted == ["web-1"]
    assert book.node_of("web-1") == "n1"


def test_an_adopted_instance_keeps_the_spec_it_was_started_with() -> None:
    book, rec = restarted({"web": spec(1).model_copy(update={"env": {"NEW": "1"}})}, grace=0.0)
    book.register(node("n1", running("web-1", replicas=1)), now=0.0)
    assert rec.step(now=1.0, wall=0.0) == []
    (kept,) = book.assignments("n1")[1]
    assert kept.spec.env == {}
