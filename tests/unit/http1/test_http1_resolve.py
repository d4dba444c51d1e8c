"""The resolver seam: service by Host, route table, clusters, inbound to the local app."""

from __future__ import annotations

import pytest

from meshproxy import fastpath as fp
from meshproxy.config import ConfigError, parse_bootstrap
from meshproxy.resolve import LocalReply, Resolver, Route, Target

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
        - {address: 10.0.0.1, port: 9001, labels: {version: v1}}
        - {address: 10.0.0.2, port: 9002, labels: {version: v2}}
    empty: {}
  policies:
    - service: ratings
      subsets: {v1: {labels: {version: v1}}, v2: {labels: {version: v2}}}
  routes:
    - service: ratings
      rules:
        - match: [{path: {prefix: /v2}}]
          backends: [{subset: v2}]
          retries: {attempts: 2, retry_on: [5xx]}
        - match: [{path: {prefix: /}, method: GET}]
"""
)
CLIENT = "127.0.0.1"


def head(method: bytes = b"GET") -> fp.RequestHead:
    return fp.parse_request_head(method + b" / HTTP/1.1\r\nHost: x\r\n\r\n")[0]  # type: ignore[index]


def resolver(previous: Resolver | None = None) -> Resolver:
    return Resolver(BOOT.snapshot, BOOT.listeners, BOOT.node.service, previous=previous)


def pick(
    r: Resolver,
    authority: bytes | None,
    path: bytes = b"/",
    listener: str = "out",
    method: bytes = b"GET",
) -> Route | LocalReply:
    return r.resolve(listener, head(method), authority, CLIENT, path)


def test_service_named_by_host_with_or_without_port_or_domain() -> None:
    r = resolver()
    for authority in (b"ratings", b"RATINGS:80", b"ratings.default.svc.cluster.local"):
        route = pick(r, authority)
        assert isinstance(route, Route) and route.service == "ratings"


def test_first_matching_rule_picks_the_backend_and_its_settings() -> None:
    r = resolver()
    v2 = pick(r, b"ratings", b"/v2/x")
    rest = pick(r, b"ratings", b"/other")
    assert isinstance(v2, Route) and isinstance(rest, Route)
    assert (v2.subset, v2.name, v2.plain) == ("v2", "routes.0.rules.0", False)
    assert v2.retry is not None and v2.retry.attempts == 2
    assert (rest.subset, rest.name, rest.plain) == ("-", "routes.0.rules.1", True)
    assert [e.port for e in v2.cluster.endpoints] == [9002]


def test_routes_are_shared_objects_per_rule_and_backend() -> None:
    r = resolver()
    assert pick(r, b"ratings", b"/a") is pick(r, b"ratings", b"/b")


def test_unknown_service_missing_host_and_no_route_answer_locally() -> None:
    r = resolver()
    unknown, missing = pick(r, b"nope"), pick(r, None)
    no_route = pick(r, b"ratings", b"/x", method=b"POST")
    assert isinstance(unknown, LocalReply) and (unknown.status, unknown.flag) == (404, "NR")
    assert isinstance(missing, LocalReply) and missing.status == 400
    assert isinstance(no_route, LocalReply) and (no_route.status, no_route.reason) == (
        404,
        "no route",
    )


def test_a_service_without_endpoints_resolves_to_an_empty_cluster() -> None:
    route = pick(resolver(), b"empty")
    assert isinstance(route, Route) and route.cluster.pick(None, 0.0) is None


def test_inbound_goes_to_the_local_app_whatever_the_host() -> None:
    route = pick(resolver(), b"anything", listener="in")
    assert isinstance(route, Route)
    endpoint = route.cluster.pick(None, 0.0)
    assert endpoint is not None
    assert (route.service, endpoint.address, endpoint.port) == ("reviews", "127.0.0.1", 8080)


def test_endpoint_state_survives_a_new_resolver() -> None:
    first = resolver()
    route = pick(first, b"ratings", b"/v2")
    assert isinstance(route, Route)
    endpoint = route.cluster.pick(None, 0.0)
    assert endpoint is not None
    route.cluster.request_started(endpoint)
    second = resolver(previous=first)
    again = pick(second, b"ratings", b"/v2")
    assert isinstance(again, Route) and again.cluster.pick(None, 0.0) is endpoint
    assert endpoint.active_requests == 1


def test_tcp_resolution_picks_an_endpoint_of_the_service() -> None:
    r = resolver()
    target = r.resolve_tcp("ratings", 0.0)
    assert isinstance(target, Target) and target.port in (9001, 9002)
    assert isinstance(r.resolve_tcp("nope", 0.0), LocalReply)
    assert isinstance(r.resolve_tcp("empty", 0.0), LocalReply)


def test_a_snapshot_routing_to_an_unknown_subset_is_refused() -> None:
    data = BOOT.snapshot.model_dump()
    data["routes"][0]["rules"][0]["backends"][0]["subset"] = "v9"
    bad = type(BOOT.snapshot).model_validate(data)
    with pytest.raises(ConfigError, match="v9"):
        Resolver(bad, BOOT.listeners, "reviews")
