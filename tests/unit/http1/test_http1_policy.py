"""The policy glue's decisions without sockets: which path is checked and
forwarded, which flag a refusal carries, how rate-limit decisions are counted."""

from __future__ import annotations

import pytest

from meshproxy.config import Snapshot
from meshproxy.http1.policy import ListenerPolicy, forwarded_path
from meshproxy.observe.exchange import LOCAL_REPLY, RATE_LIMITED, UNAUTHORIZED
from meshproxy.policy import LocalReply, RequestContext, compile_chain


@pytest.mark.parametrize(
    ("sent", "forwarded"),
    [
        (b"/ratings/1", b"/ratings/1"),
        (b"/a/./b/../c", b"/a/c"),
        (b"//a///b", b"/a/b"),
        (b"/a/%2e%2e/b", b"/b"),
        (b"/a/../b?x=/../y", b"/b?x=/../y"),
        (b"/a%20b?q=%2F", b"/a%20b?q=%2F"),  # escapes elsewhere, and in the query, stay
    ],
)
def test_the_forwarded_path_is_the_normalised_one(sent: bytes, forwarded: bytes) -> None:
    assert forwarded_path(sent) == forwarded


@pytest.mark.parametrize("sent", [b"/a%2Fb", b"/a%2fb", b"/a%5Cb", b"/a%5c..%5cb"])
def test_escaped_separators_in_the_path_are_refused(sent: bytes) -> None:
    assert forwarded_path(sent) is None


def test_an_unchanged_path_is_the_same_object_so_the_head_is_reused() -> None:
    path = b"/x/y?z=1"
    assert forwarded_path(path) is path


def policy_for(snapshot: dict[str, object], calls: list[tuple[str, bool]]) -> ListenerPolicy:
    chain = compile_chain(Snapshot.model_validate(snapshot), "ratings", "inbound")
    return ListenerPolicy(chain, "ratings", "inbound", lambda s, ok: calls.append((s, ok)))


SNAPSHOT = {
    "policies": [
        {"service": "ratings", "rate_limits": [{"key": "client_address", "requests_per_second": 1}]}
    ],
    "access": [{"service": "ratings", "action": "deny", "rules": [{"to": {"paths": ["/admin"]}}]}],
}


def test_refusals_are_flagged_by_the_filter_that_answered() -> None:
    calls: list[tuple[str, bool]] = []
    policy = policy_for(SNAPSHOT, calls)
    answers = []
    for path in (b"/admin", b"/"):
        rc = RequestContext(b"GET", path, [], "10.0.0.1", now=0.0, service="ratings")
        reply = policy.chain.on_request(rc)
        assert isinstance(reply, LocalReply)
        policy.decided(rc, reply)
        answers.append((reply.status, policy.flag_for(reply, rc.ran)))
    assert answers == [(403, UNAUTHORIZED), (429, RATE_LIMITED)]
    assert calls == [("ratings", True), ("ratings", False)]
    assert policy.flag_for(LocalReply(500, "filter error"), 0) == LOCAL_REPLY


def test_without_a_rate_limit_no_decision_is_counted() -> None:
    calls: list[tuple[str, bool]] = []
    policy = policy_for({"access": SNAPSHOT["access"]}, calls)
    rc = RequestContext(b"GET", b"/", [], "10.0.0.1", service="ratings")
    assert policy.chain.on_request(rc) is None
    policy.decided(rc, None)
    assert calls == []
    assert policy.record is None
