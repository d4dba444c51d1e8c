"""Route selection: precedence, match kinds, hosts, default rules, splits."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

from meshproxy.routing import CompiledRoutes, Decision
from tests.unit.routing.snapshots import snapshot

Headers = list[tuple[bytes, bytes]]


def compile_rules(rules: list[dict[str, Any]], **table: Any) -> CompiledRoutes:
    return CompiledRoutes.from_snapshot(
        snapshot([{"service": "ratings", "rules": rules, **table}]), rand=lambda: 0.5
    )


def pick(
    routes: CompiledRoutes,
    target: bytes = b"/",
    method: bytes = b"GET",
    headers: Headers | None = None,
    host: bytes | None = b"ratings",
    service: str = "ratings",
    client: str = "10.0.0.1",
) -> Decision | None:
    return routes.select(service, host, method, target, headers or [], client)


def subset_of(decision: Decision | None) -> str | None:
    assert decision is not None
    return decision.backend.subset


def test_first_matching_rule_wins() -> None:
    routes = compile_rules(
        [
            {"match": [{"path": {"prefix": "/api"}}], "backends": [{"subset": "v1"}]},
            {"match": [{"path": {"prefix": "/api/v2"}}], "backends": [{"subset": "v2"}]},
            {"backends": [{"subset": "v3"}]},
        ]
    )
    assert subset_of(pick(routes, b"/api/v2/x")) == "v1"
    assert subset_of(pick(routes, b"/other")) == "v3"


def test_match_blocks_are_or_and_keys_in_a_block_are_and() -> None:
    routes = compile_rules(
        [
            {
                "match": [
                    {"path": {"prefix": "/a"}, "method": "POST"},
                    {"headers": {"x-canary": {"exact": "1"}}},
                ],
                "backends": [{"subset": "v2"}],
            },
            {"backends": [{"subset": "v1"}]},
        ]
    )
    assert subset_of(pick(routes, b"/a", b"POST")) == "v2"
    assert subset_of(pick(routes, b"/a", b"GET")) == "v1"  # AND: method fails
    assert subset_of(pick(routes, b"/b", headers=[(b"X-Canary", b"1")])) == "v2"  # OR
    assert subset_of(pick(routes, b"/b", headers=[(b"x-canary", b"0")])) == "v1"


def test_path_exact_prefix_and_regex_match_the_path_without_query() -> None:
    routes = compile_rules(
        [
            {"match": [{"path": {"exact": "/health"}}], "backends": [{"subset": "v1"}]},
            {"match": [{"path": {"regex": "/users/[0-9]+"}}], "backends": [{"subset": "v2"}]},
            {"match": [{"path": {"prefix": "/static/"}}], "backends": [{"subset": "v3"}]},
        ]
    )
    assert subset_of(pick(routes, b"/health?full=1")) == "v1"
    assert pick(routes, b"/healthz") is None
    assert subset_of(pick(routes, b"/users/42")) == "v2"
    assert pick(routes, b"/users/42/posts") is None  # regex must match the whole path
    assert subset_of(pick(routes, b"/static/app.js")) == "v3"
    assert subset_of(pick(routes, b"http://ratings:80/health")) == "v1"  # absolute form


def test_header_matches_cover_exact_prefix_regex_present_and_absent() -> None:
    routes = compile_rules(
        [
            {"match": [{"headers": {"x-a": {"exact": "Yes"}}}], "backends": [{"subset": "v1"}]},
            {"match": [{"headers": {"x-b": {"prefix": "be"}}}], "backends": [{"subset": "v2"}]},
            {
                "match": [{"headers": {"x-c": {"regex": "[a-z]{3}"}}}],
                "backends": [{"subset": "v3"}],
            },
            {
                "match": [{"headers": {"x-d": {"present": True}}}],
                "backends": [{"service": "reviews"}],
            },
            {"match": [{"headers": {"x-e": {"present": False}}}], "backends": [{"subset": "v1"}]},
        ]
    )
    assert subset_of(pick(routes, headers=[(b"x-a", b"Yes")])) == "v1"
    assert subset_of(pick(routes, headers=[(b"x-e", b"-"), (b"X-B", b"beta")])) == "v2"
    assert subset_of(pick(routes, headers=[(b"x-e", b"-"), (b"x-c", b"abc")])) == "v3"
    decision = pick(routes, headers=[(b"x-e", b"-"), (b"x-c", b"abcd"), (b"x-d", b"")])
    assert decision is not None and decision.backend.service == "reviews"
    assert subset_of(pick(routes, headers=[(b"x-a", b"yes")])) == "v1"  # via x-e absent
    assert pick(routes, headers=[(b"x-a", b"yes"), (b"x-e", b"1")]) is None


def test_repeated_header_matches_when_any_value_matches() -> None:
    routes = compile_rules(
        [{"match": [{"headers": {"x-team": {"exact": "blue"}}}], "backends": [{"subset": "v2"}]}]
    )
    assert subset_of(pick(routes, headers=[(b"x-team", b"red"), (b"x-team", b"blue")])) == "v2"


def test_query_params_are_decoded_and_matched() -> None:
    routes = compile_rules(
        [
            {
                "match": [{"query_params": {"q": {"exact": "a b"}, "debug": {"present": True}}}],
                "backends": [{"subset": "v2"}],
            },
            {"backends": [{"subset": "v1"}]},
        ]
    )
    assert subset_of(pick(routes, b"/s?q=a+b&debug")) == "v2"
    assert subset_of(pick(routes, b"/s?q=a%20b&debug=1")) == "v2"
    assert subset_of(pick(routes, b"/s?q=a%20b")) == "v1"
    assert subset_of(pick(routes, b"/s?q=ab&debug=1")) == "v1"


def test_method_match_is_exact() -> None:
    routes = compile_rules([{"match": [{"method": "DELETE"}], "backends": [{"subset": "v3"}]}])
    assert subset_of(pick(routes, method=b"DELETE")) == "v3"
    assert pick(routes, method=b"delete") is None


def test_no_matching_rule_gives_none() -> None:
    routes = compile_rules([{"match": [{"path": {"prefix": "/only"}}]}])
    assert pick(routes, b"/elsewhere") is None


def test_service_without_route_table_gets_default_rule_to_all_endpoints() -> None:
    routes = compile_rules([{"backends": [{"subset": "v1"}]}])
    decision = pick(routes, service="reviews", host=b"reviews")
    assert decision is not None
    assert decision.backend.service == "reviews" and decision.backend.subset is None
    assert [e.port for e in decision.backend.endpoints] == [9100]
    assert decision.rule.retry is None and decision.rule.timeout is None


def test_unknown_service_gives_none() -> None:
    routes = compile_rules([{"backends": [{"subset": "v1"}]}])
    assert pick(routes, service="nope") is None


def test_rule_without_backends_goes_to_every_endpoint_of_its_service() -> None:
    routes = compile_rules([{"timeout": "1s"}])
    decision = pick(routes)
    assert decision is not None and decision.backend.subset is None
    assert len(decision.backend.endpoints) == 3
    assert decision.rule.timeout == 1.0


def test_hosts_pick_the_table_exact_then_longest_wildcard_then_hostless() -> None:
    def table(subset: str, hosts: list[str] | None = None) -> dict[str, Any]:
        rules = [{"backends": [{"subset": subset}]}]
        return {"service": "ratings", "rules": rules, **({"hosts": hosts} if hosts else {})}

    routes = CompiledRoutes.from_snapshot(
        snapshot(
            [
                table("v1", ["ratings.example.com"]),
                table("v2", ["*.example.com"]),
                table("v3", ["*.eu.example.com"]),
                {"service": "ratings", "rules": [{"backends": [{"service": "reviews"}]}]},
            ]
        )
    )
    assert subset_of(pick(routes, host=b"Ratings.Example.COM:8080")) == "v1"
    assert subset_of(pick(routes, host=b"x.example.com")) == "v2"
    assert subset_of(pick(routes, host=b"x.eu.example.com")) == "v3"
    for other in (b"example.com", b"ratings", None):
        decision = pick(routes, host=other)
        assert decision is not None and decision.backend.service == "reviews"


def test_host_not_covered_by_any_table_falls_back_to_the_default_rule() -> None:
    routes = compile_rules([{"backends": [{"subset": "v1"}]}], hosts=["ratings.example.com"])
    assert subset_of(pick(routes, host=b"ratings.example.com")) == "v1"
    decision = pick(routes, host=b"ratings")
    assert decision is not None and decision.backend.subset is None


def test_split_with_hash_header_is_sticky_and_follows_weights() -> None:
    routes = compile_rules(
        [
            {
                "backends": [{"subset": "v1", "weight": 75}, {"subset": "v2", "weight": 25}],
                "hash_on": {"header": "X-User"},
            }
        ]
    )
    seen: Counter[str | None] = Counter()
    for i in range(4000):
        headers = [(b"x-user", b"u%d" % i)]
        first = subset_of(pick(routes, headers=headers))
        assert subset_of(pick(routes, headers=headers)) == first
        seen[first] += 1
    assert 2800 < seen["v1"] < 3200 and seen["v1"] + seen["v2"] == 4000


def test_split_with_hash_cookie_uses_the_named_cookie() -> None:
    routes = compile_rules(
        [
            {
                "backends": [{"subset": "v1"}, {"subset": "v2"}],
                "hash_on": {"cookie": "session"},
            }
        ]
    )
    chosen = {
        subset_of(pick(routes, headers=[(b"Cookie", b"a=1; session=s%d" % i)])) for i in range(64)
    }
    assert chosen == {"v1", "v2"}
    for i in range(64):
        one = pick(routes, headers=[(b"cookie", b"session=s%d" % i)])
        two = pick(routes, headers=[(b"cookie", b"theme=dark"), (b"cookie", b"session=s%d" % i)])
        assert subset_of(one) == subset_of(two)


def test_split_on_client_address_is_sticky_per_client() -> None:
    routes = compile_rules(
        [
            {
                "backends": [{"subset": "v1"}, {"subset": "v2"}, {"subset": "v3"}],
                "hash_on": {"client_address": True},
            }
        ]
    )
    by_client = {c: subset_of(pick(routes, client=c)) for c in (f"10.0.0.{i}" for i in range(50))}
    assert set(by_client.values()) == {"v1", "v2", "v3"}
    assert all(subset_of(pick(routes, client=c)) == s for c, s in by_client.items())


def test_split_without_key_draws_from_the_injected_random_source() -> None:
    draws = itertools.cycle([0.1, 0.95])
    routes = CompiledRoutes.from_snapshot(
        snapshot(
            [
                {
                    "service": "ratings",
                    "rules": [
                        {
                            "backends": [
                                {"subset": "v1", "weight": 90},
                                {"subset": "v2", "weight": 10},
                            ],
                            "hash_on": {"header": "x-user"},
                        }
                    ],
                }
            ]
        ),
        rand=lambda: next(draws),
    )
    # The key header is missing: each request is split at random.
    assert [subset_of(pick(routes)) for _ in range(4)] == ["v1", "v2", "v1", "v2"]


def test_zero_weight_backend_receives_nothing() -> None:
    draws = iter([i / 100 for i in range(100)])
    routes = CompiledRoutes.from_snapshot(
        snapshot(
            [
                {
                    "service": "ratings",
                    "rules": [
                        {
                            "backends": [
                                {"subset": "v1", "weight": 1},
                                {"subset": "v2", "weight": 0},
                                {"subset": "v3", "weight": 1},
                            ]
                        }
                    ],
                }
            ]
        ),
        rand=lambda: next(draws),
    )
    assert Counter(subset_of(pick(routes)) for _ in range(100)) == {"v1": 50, "v3": 50}


def test_decisions_are_precomputed_and_shared_between_requests() -> None:
    routes = compile_rules([{"match": [{"path": {"prefix": "/"}}], "backends": [{"subset": "v1"}]}])
    assert pick(routes, b"/a") is pick(routes, b"/b")


def test_prefix_rewrite_replaces_the_prefix_of_the_block_that_matched() -> None:
    routes = compile_rules(
        [
            {
                "match": [
                    {"path": {"prefix": "/api"}, "headers": {"x-old": {"present": True}}},
                    {"path": {"prefix": "/api/v1/"}},
                ],
                "rewrite": {"prefix": "/v1/", "host": "ratings.internal"},
                "backends": [{"subset": "v1"}],
            }
        ]
    )
    legacy = pick(routes, b"/api/v1/users?x=1", headers=[(b"x-old", b"1")])
    assert legacy is not None
    assert legacy.upstream_target(b"/api/v1/users?x=1") == b"/v1/v1/users?x=1"
    current = pick(routes, b"/api/v1/users?x=1")
    assert current is not None
    assert current.upstream_target(b"/api/v1/users?x=1") == b"/v1/users?x=1"
    assert current.rule.host_rewrite == b"ratings.internal"


def test_upstream_target_turns_absolute_form_into_origin_form() -> None:
    routes = compile_rules([{"backends": [{"subset": "v1"}]}])
    decision = pick(routes)
    assert decision is not None
    assert decision.upstream_target(b"http://ratings:9080/a?b=1") == b"/a?b=1"
    assert decision.upstream_target(b"http://ratings:9080") == b"/"
    assert decision.upstream_target(b"/plain") == b"/plain"


def test_prefix_rewrite_uses_the_first_matching_block_even_before_a_catch_all() -> None:
    routes = compile_rules(
        [
            {
                "match": [{"path": {"prefix": "/api"}, "method": "GET"}, {}],
                "rewrite": {"prefix": "/v2"},
                "backends": [{"subset": "v1"}],
            }
        ]
    )
    got = pick(routes, b"/api/users", b"GET")
    assert got is not None and got.upstream_target(b"/api/users") == b"/v2/users"
    other = pick(routes, b"/api/users", b"POST")
    assert other is not None and other.upstream_target(b"/api/users") == b"/v2/api/users"
