"""The watcher's decisions without sockets: backoff, delivery parsing, what it
polls with and what it owes the control plane."""

import json

import pytest

from meshproxy.config import Node
from meshproxy.xds import (
    MAX_REASON,
    Ack,
    Backoff,
    Delivery,
    DeliveryError,
    WatchState,
    parse_delivery,
    reason,
)

GOOD = {"services": {"ratings": {"endpoints": [{"address": "127.0.0.1", "port": 9001}]}}}


def _body(version: object = 3, nonce: object = "n1", snapshot: object = GOOD) -> bytes:
    return json.dumps({"version": version, "nonce": nonce, "snapshot": snapshot}).encode()


def test_backoff_doubles_from_base_up_to_the_cap() -> None:
    backoff = Backoff(base=0.5, cap=30.0)
    ceilings = [backoff.delay(n, 1.0) for n in range(1, 10)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_backoff_is_full_jitter_between_zero_and_the_ceiling() -> None:
    backoff = Backoff(base=1.0, cap=30.0)
    assert backoff.delay(3, 0.0) == 0.0
    assert backoff.delay(3, 0.25) == 1.0
    assert backoff.delay(3, 0.999) == pytest.approx(3.996)


def test_no_failure_means_no_wait_and_huge_counts_stay_at_the_cap() -> None:
    backoff = Backoff(base=0.5, cap=30.0)
    assert backoff.delay(0, 1.0) == 0.0
    assert backoff.delay(10_000, 1.0) == 30.0


def test_a_valid_delivery_parses_with_its_version_and_nonce() -> None:
    delivery = parse_delivery(_body())
    assert (delivery.version, delivery.nonce, delivery.problem) == (3, "n1", None)
    assert delivery.snapshot is not None
    assert delivery.snapshot.services["ratings"].endpoints[0].port == 9001


def test_an_invalid_snapshot_is_kept_as_a_problem_naming_the_field_path() -> None:
    bad = {"services": {"ratings": {"endpoints": [{"address": "127.0.0.1", "port": "x"}]}}}
    delivery = parse_delivery(_body(snapshot=bad))
    assert delivery.snapshot is None and delivery.version == 3
    assert delivery.problem is not None
    assert delivery.problem.startswith("snapshot.services.ratings.endpoints.0.port: ")


def test_an_unknown_snapshot_field_is_refused_by_name() -> None:
    delivery = parse_delivery(_body(snapshot={**GOOD, "surprise": 1}))
    assert delivery.problem is not None and "snapshot.surprise" in delivery.problem


@pytest.mark.parametrize(
    "body",
    [
        b"{nope",
        b"[1]",
        _body(version=None),
        _body(version=-1),
        _body(version=True),
        _body(nonce=""),
        _body(nonce=7),
    ],
)
def test_a_body_that_is_no_delivery_is_an_error_not_a_nack(body: bytes) -> None:
    with pytest.raises(DeliveryError):
        parse_delivery(body)


def test_a_long_reason_is_cut_to_what_the_ack_accepts() -> None:
    text = reason([(f"routes.{i}", "x" * 100) for i in range(100)])
    assert len(text) == MAX_REASON and text.endswith("...")
    assert reason([("a.b", "bad"), ("c", "worse")]) == "a.b: bad; c: worse"


def test_first_poll_has_no_index_then_carries_the_version_received() -> None:
    node = Node(id="reviews-1", service="reviews", upstreams=["ratings", "details"])
    state = WatchState()
    assert state.poll_params(node, "reviews-1", 30.0) == {
        "node": "reviews-1",
        "service": "reviews",
        "upstreams": "ratings,details",
        "wait": "30000ms",
    }
    state.received(Delivery(4, "n1", None, "bad"))
    assert state.poll_params(node, "reviews-1", 0.25)["index"] == "4"
    assert state.poll_params(node, "reviews-1", 0.25)["wait"] == "250ms"


def test_no_upstream_declaration_sends_none_and_an_empty_one_sends_empty() -> None:
    state = WatchState()
    assert "upstreams" not in state.poll_params(Node(id="a", service="s"), "a", 1.0)
    empty = state.poll_params(Node(id="a", service="s", upstreams=[]), "a", 1.0)
    assert empty["upstreams"] == ""


def test_accepting_owes_an_ack_and_refusing_owes_a_nack_with_the_reason() -> None:
    state = WatchState()
    first = Delivery(2, "n1", None)
    state.received(first)
    state.accepted(first)
    assert state.pending == Ack(2, "n1") and state.applied == 2 and state.in_force
    second = Delivery(3, "n2", None)
    state.received(second)
    assert state.pending is None  # superseded: the older ACK is no longer owed
    state.refused(second, "routes.0: bad")
    assert state.pending == Ack(3, "n2", "routes.0: bad")
    assert state.applied == 2 and state.index == 3 and state.last_error == "routes.0: bad"


def test_ack_body_carries_error_only_for_a_nack() -> None:
    assert Ack(2, "n1").body("x") == {"node": "x", "version": 2, "nonce": "n1"}
    assert Ack(2, "n1", "why").body("x")["error"] == "why"


def test_the_cache_puts_a_snapshot_in_force_and_sets_the_index() -> None:
    state = WatchState()
    assert not state.in_force
    state.cache_applied(7)
    assert state.in_force and state.source == "cache" and state.index == 7


def test_failures_count_until_a_round_succeeds() -> None:
    state = WatchState()
    state.round_failed("refused")
    state.round_failed("refused")
    assert state.failures == 2 and state.last_error == "refused"
    state.round_succeeded()
    assert state.failures == 0


def test_the_cache_does_not_move_the_index_back_from_a_refused_delivery() -> None:
    state = WatchState()
    refused = Delivery(9, "n", None, "bad")
    state.received(refused)
    state.refused(refused, "bad")
    state.cache_applied(7)
    assert state.index == 9 and state.applied == 7
