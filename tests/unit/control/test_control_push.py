from itertools import count

from control.push import NodeInfo, PushBook, build_snapshot, visible_services
from control.state import DesiredState, parse_resource
from meshproxy.config.policy import Endpoint
from meshproxy.routing import CompiledRoutes


def _mesh() -> tuple[DesiredState, dict[str, list[Endpoint]]]:
    state = DesiredState()
    for name in ("reviews", "ratings", "details"):
        state = state.with_resource("policies", name, parse_resource("policies", name, {}))
        access = {"action": "allow", "rules": []}
        state = state.with_resource("access", name, parse_resource("access", name, access))
    # ratings sends a share of its traffic to another service, ratings-next
    table = {"rules": [{"backends": [{"weight": 9}, {"service": "ratings-next", "weight": 1}]}]}
    state = state.with_resource("routes", "ratings", parse_resource("routes", "ratings", table))
    endpoints = {
        name: [Endpoint(address="127.0.0.1", port=port)]
        for port, name in enumerate(["reviews", "ratings", "details", "ratings-next"], 9000)
    }
    return state, endpoints


def _book() -> PushBook:
    numbers = count(1)
    return PushBook(lambda: f"n{next(numbers)}")


def test_proxy_gets_its_service_its_upstreams_and_their_route_targets_only() -> None:
    state, endpoints = _mesh()
    node = NodeInfo("reviews-1", "reviews", ("ratings",))
    snap = build_snapshot(node, state, endpoints, version=7)
    assert set(snap.services) == {"reviews", "ratings", "ratings-next"}
    assert [r.service for r in snap.routes] == ["ratings"]
    assert [p.service for p in snap.policies] == ["ratings", "reviews"]
    assert snap.version == "7"


def test_access_policies_are_only_the_proxys_own_service() -> None:
    state, endpoints = _mesh()
    snap = build_snapshot(NodeInfo("reviews-1", "reviews", None), state, endpoints, 1)
    assert [a.service for a in snap.access] == ["reviews"]


def test_no_upstream_declaration_means_every_service() -> None:
    state, endpoints = _mesh()
    names = visible_services(NodeInfo("x", "reviews", None), state, endpoints)
    assert names == {"reviews", "ratings", "details", "ratings-next"}
    assert visible_services(NodeInfo("x", "reviews", ()), state, endpoints) == {"reviews"}


def test_a_mirror_target_is_part_of_the_view_so_the_scoped_snapshot_compiles() -> None:
    state, endpoints = _mesh()
    table = {"rules": [{"mirror": {"service": "details", "percent": 10}}]}
    state = state.with_resource("routes", "ratings", parse_resource("routes", "ratings", table))
    node = NodeInfo("reviews-1", "reviews", ("ratings",))
    snap = build_snapshot(node, state, endpoints, version=3)
    assert set(snap.services) == {"reviews", "ratings", "details"}
    CompiledRoutes.from_snapshot(snap)


def test_first_poll_is_answered_at_once_and_the_same_index_then_waits() -> None:
    state, endpoints = _mesh()
    node = NodeInfo("reviews-1", "reviews", ("ratings",))
    book = _book()
    first = book.offer(node, None, build_snapshot(node, state, endpoints, 3), now=0.0)
    assert first is not None and (first.version, first.nonce) == (3, "n1")
    assert book.offer(node, 3, build_snapshot(node, state, endpoints, 3), now=1.0) is None


def test_a_change_outside_the_proxys_view_does_not_wake_it() -> None:
    state, endpoints = _mesh()
    node = NodeInfo("reviews-1", "reviews", ("ratings",))
    book = _book()
    book.offer(node, None, build_snapshot(node, state, endpoints, 3), now=0.0)
    endpoints["details"] = []
    assert book.offer(node, 3, build_snapshot(node, state, endpoints, 4), now=1.0) is None
    endpoints["ratings"] = []
    delivery = book.offer(node, 3, build_snapshot(node, state, endpoints, 5), now=2.0)
    assert delivery is not None and delivery.version == 5
    assert delivery.snapshot.services["ratings"].endpoints == []


def test_ack_records_the_version_and_a_nack_its_reason_keeping_the_acked_one() -> None:
    state, endpoints = _mesh()
    node = NodeInfo("reviews-1", "reviews", None)
    book = _book()
    first = book.offer(node, None, build_snapshot(node, state, endpoints, 1), now=0.0)
    assert first is not None
    assert book.ack("reviews-1", 1, first.nonce, None, now=1.0).accepted
    endpoints["ratings"] = []
    second = book.offer(node, 1, build_snapshot(node, state, endpoints, 2), now=2.0)
    assert second is not None
    assert book.ack("reviews-1", 2, second.nonce, "routes.0: bad", now=3.0).accepted
    record = book.records["reviews-1"]
    assert (record.acked_version, record.last_error, record.error_version) == (
        1,
        "routes.0: bad",
        2,
    )
    assert record.last_seen == 3.0


def test_ack_with_a_stale_nonce_or_unknown_node_is_not_recorded() -> None:
    state, endpoints = _mesh()
    node = NodeInfo("reviews-1", "reviews", None)
    book = _book()
    book.offer(node, None, build_snapshot(node, state, endpoints, 1), now=0.0)
    assert not book.ack("reviews-1", 1, "not-the-nonce", None, now=1.0).accepted
    assert not book.ack("ghost", 1, "n1", None, now=1.0).accepted
    assert book.records["reviews-1"].acked_version is None


def test_a_proxy_that_lost_its_copy_gets_the_same_content_under_the_same_version() -> None:
    state, endpoints = _mesh()
    node = NodeInfo("reviews-1", "reviews", None)
    book = _book()
    book.offer(node, None, build_snapshot(node, state, endpoints, 4), now=0.0)
    again = book.offer(node, None, build_snapshot(node, state, endpoints, 9), now=1.0)
    assert again is not None and again.version == 4 and again.snapshot.version == "4"
