"""The policy glue's decisions without sockets: which path is checked and
forwarded, which flag a refusal carries, how rate-limit decisions are counted."""

from __future__ import annotations

import pytest

from meshproxy import fastpath as fp
from meshproxy.config import Snapshot
from meshproxy.http1.policy import ListenerPolicy, forwarded_path, run_request_phase
from meshproxy.observe.exchange import LOCAL_REPLY, RATE_LIMITED, UNAUTHORIZED, Exchange
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


class RoutingServer:
    """The part of ``HttpServer`` the request phase uses when it continues."""

    client_addr = "10.0.0.7"
    peer = ("10.0.0.7", 41000)
    principal = "spiffe://mesh/ns/default/sa/reviews"

    def __init__(self) -> None:
        self.routed: list[RequestContext] = []
        self.policy: ListenerPolicy | None = None

    def route_request(self, *args: object) -> None:
        rc = args[-1]
        assert isinstance(rc, RequestContext)
        self.routed.append(rc)


def test_the_data_path_builds_the_context_a_constructor_would() -> None:
    policy = policy_for({"access": SNAPSHOT["access"]}, [])
    raw = b"GET /a//b?q=1 HTTP/1.1\r\nHost: ratings\r\nX-User: ann\r\n\r\n"
    got = fp.parse_request_head(raw, 0, 65536, 100)
    assert got is not None
    head = got[0]
    server = RoutingServer()
    ex = Exchange("inbound", "inbound", "reviews")
    run_request_phase(
        server,  # type: ignore[arg-type]
        policy,
        head,
        raw,
        ex,
        head.target,
        None,
        b"ratings",
        b"rid",
        12.5,
    )
    [rc] = server.routed
    expected = RequestContext(
        b"GET",
        b"/a/b?q=1",
        head.headers,
        "10.0.0.7",
        41000,
        12.5,
        b"ratings",
        "ratings",
        "inbound",
        "spiffe://mesh/ns/default/sa/reviews",
    )
    for name in RequestContext.__slots__:
        assert getattr(rc, name) == getattr(expected, name), name
    assert rc.response_headers is not expected.response_headers  # one list per request
