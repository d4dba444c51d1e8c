"""The resolver seam: service by Host, round robin, inbound to the local app."""

from __future__ import annotations

from meshproxy import fastpath as fp
from meshproxy.config import parse_bootstrap
from meshproxy.resolve import LocalReply, Resolver, Target

BOOT = parse_bootstrap(
    """
node: {id: n1, service: reviews}
listeners:
  - {name: out, port: 0}
  - {name: in, direction: inbound, port: 0, local_app: "127.0.0.1:8080"}
snapshot:
  services:
    ratings:
      endpoints:
        - {address: 10.0.0.1, port: 9001}
        - {address: 10.0.0.2, port: 9002}
    empty: {}
"""
)
HEAD = fp.parse_request_head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")[0]  # type: ignore[index]
CLIENT = ("127.0.0.1", 5000)


def resolver() -> Resolver:
    return Resolver(BOOT.snapshot, BOOT.listeners, BOOT.node.service)


def pick(r: Resolver, authority: bytes | None, listener: str = "out") -> Target | LocalReply:
    return r.resolve(listener, HEAD, authority, CLIENT)


def test_service_named_by_host_with_or_without_port_or_domain() -> None:
    r = resolver()
    for authority in (b"ratings", b"RATINGS:80", b"ratings.default.svc.cluster.local"):
        target = pick(r, authority)
        assert isinstance(target, Target) and target.service == "ratings"


def test_endpoints_are_picked_round_robin() -> None:
    r = resolver()
    ports = [t.port for t in (pick(r, b"ratings") for _ in range(4)) if isinstance(t, Target)]
    assert ports == [9001, 9002, 9001, 9002]


def test_unknown_service_missing_host_and_no_endpoints_answer_locally() -> None:
    r = resolver()
    unknown, missing, empty = pick(r, b"nope"), pick(r, None), pick(r, b"empty")
    assert isinstance(unknown, LocalReply) and (unknown.status, unknown.reason) == (
        404,
        "unknown service",
    )
    assert isinstance(missing, LocalReply) and missing.status == 400
    assert isinstance(empty, LocalReply) and empty.status == 503


def test_inbound_goes_to_the_local_app_whatever_the_host() -> None:
    target = pick(resolver(), b"anything", listener="in")
    assert isinstance(target, Target)
    assert (target.service, target.host, target.port) == ("reviews", "127.0.0.1", 8080)


def test_targets_are_shared_objects_keyed_by_endpoint() -> None:
    r = resolver()
    first = pick(r, b"ratings")
    pick(r, b"ratings")
    third = pick(r, b"ratings")
    assert first is third
    assert isinstance(first, Target) and first.key == ("10.0.0.1", 9001)


def test_tcp_resolution_uses_the_service_name() -> None:
    r = resolver()
    target = r.resolve_tcp("ratings")
    assert isinstance(target, Target) and target.port == 9001
    assert isinstance(r.resolve_tcp("nope"), LocalReply)
