"""Authorization: Istio's order, sources, operations, conditions, path normalisation."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from meshproxy.config.access import Access, AccessCondition
from meshproxy.policy import LocalReply, RequestContext
from meshproxy.policy.authz import Authz, claim_value, normalize_path, path_matcher, plain_path


def policy(action: str, *rules: dict[str, Any], **kw: Any) -> Access:
    return Access.model_validate({"service": "ratings", "action": action, "rules": rules, **kw})


def request(
    method: bytes = b"GET",
    path: bytes = b"/",
    ip: str = "10.0.0.1",
    headers: list[tuple[bytes, bytes]] | None = None,
    peer: str | None = None,
    claims: dict[str, Any] | None = None,
) -> RequestContext:
    c = RequestContext(method, path, headers or [], client_ip=ip, peer=peer)
    c.claims = claims
    return c


def allowed(authz: Authz, c: RequestContext) -> bool:
    return authz.on_request(c) is None


def test_no_policy_allows_everything_and_the_filter_is_inactive() -> None:
    authz = Authz([])
    assert not authz.active
    assert allowed(authz, request())


def test_a_matching_deny_wins_over_a_matching_allow() -> None:
    authz = Authz(
        [
            policy("allow", {"to": {"paths": ["/*"]}}),
            policy("deny", {"to": {"paths": ["/admin/*"]}}),
        ]
    )
    assert allowed(authz, request(path=b"/public"))
    reply = authz.on_request(request(path=b"/admin/users"))
    assert isinstance(reply, LocalReply)
    assert (reply.status, reply.reason) == (403, "access denied: deny policy")
    assert authz.counters.get("authz_denied", "deny_policy") == 1


def test_with_allow_policies_a_request_no_rule_allows_is_denied() -> None:
    authz = Authz([policy("allow", {"to": {"methods": ["GET"]}})])
    assert allowed(authz, request())
    reply = authz.on_request(request(method=b"POST"))
    assert isinstance(reply, LocalReply)
    assert (reply.status, reply.reason) == (403, "access denied: no allow policy matched")


def test_deny_policies_alone_allow_what_they_do_not_match() -> None:
    authz = Authz([policy("deny", {"to": {"methods": ["DELETE"]}})])
    assert allowed(authz, request(method=b"GET"))
    assert not allowed(authz, request(method=b"DELETE"))


def test_an_allow_policy_without_rules_allows_nothing_and_an_empty_rule_everything() -> None:
    assert not allowed(Authz([policy("allow")]), request())
    assert allowed(Authz([policy("allow", {})]), request())
    assert not allowed(Authz([policy("deny", {})]), request())


def test_fields_of_a_rule_must_all_match_and_rules_of_a_policy_any() -> None:
    authz = Authz(
        [
            policy(
                "allow",
                {"from": {"principals": ["reviews"]}, "to": {"methods": ["GET"]}},
                {"to": {"methods": ["POST"], "paths": ["/ratings/*"]}},
            )
        ],
    )
    assert allowed(authz, request(peer="reviews"))
    assert not allowed(authz, request(peer="other"))
    assert not allowed(authz, request(method=b"PUT", peer="reviews"))
    assert allowed(authz, request(method=b"POST", path=b"/ratings/1", peer="other"))
    assert not allowed(authz, request(method=b"POST", path=b"/other", peer="other"))


def test_principal_comes_from_the_peer_then_the_configured_header_then_the_address() -> None:
    rules = {"from": {"principals": ["reviews", "10.9.9.9"]}}
    authz = Authz([policy("allow", rules, principal_header="x-caller")])
    assert allowed(authz, request(peer="reviews", headers=[(b"X-Caller", b"evil")]))
    assert allowed(authz, request(headers=[(b"X-Caller", b"reviews")]))
    assert not allowed(authz, request(headers=[(b"X-Caller", b"evil")]))
    assert allowed(authz, request(ip="10.9.9.9"))
    assert not allowed(authz, request(ip="10.9.9.8"))


def test_services_match_the_last_segment_of_a_spiffe_principal() -> None:
    authz = Authz([policy("allow", {"from": {"services": ["reviews"]}})])
    assert allowed(authz, request(peer="spiffe://mesh.local/ns/default/sa/reviews"))
    assert allowed(authz, request(peer="reviews"))
    assert not allowed(authz, request(peer="spiffe://mesh.local/ns/default/sa/productpage"))


def test_addresses_match_exact_ips_and_cidr_blocks() -> None:
    authz = Authz([policy("allow", {"from": {"addresses": ["10.1.0.0/16", "::1"]}})])
    assert allowed(authz, request(ip="10.1.2.3"))
    assert allowed(authz, request(ip="::1"))
    assert not allowed(authz, request(ip="10.2.0.1"))
    assert not allowed(authz, request(ip="not-an-ip"))


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/ratings", b"/ratings", True),
        ("/ratings", b"/ratings/1", False),
        ("/ratings/*", b"/ratings/1/stars", True),
        ("/ratings/*", b"/ratingsx", False),
        ("*.json", b"/a/b.json", True),
        ("/api/*/items", b"/api/v1/items", True),
        ("/api/*/items", b"/api/v1/x/items", False),
        ("/api/**/items", b"/api/v1/x/items", True),
        ("/file?.txt", b"/file1.txt", True),
        ("/file?.txt", b"/file/.txt", False),
        ("/a+b/*.c", b"/a+b/x.c", True),
    ],
)
def test_path_patterns(pattern: str, path: bytes, matches: bool) -> None:
    assert path_matcher(pattern)(path) is matches


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        (b"/a/b?x=1", b"/a/b"),
        (b"/public/../admin/x", b"/admin/x"),
        (b"/public/%2e%2e/admin", b"/admin"),
        (b"//admin//x", b"/admin/x"),
        (b"/./admin/.", b"/admin/"),
        (b"/../../admin", b"/admin"),
        (b"", b"/"),
    ],
)
def test_paths_are_normalised_before_matching(raw: bytes, normal: bytes) -> None:
    assert normalize_path(raw) == normal


def test_dot_segments_cannot_slip_past_a_deny_rule() -> None:
    authz = Authz([policy("deny", {"to": {"paths": ["/admin/*"]}})])
    assert not allowed(authz, request(path=b"/public/../admin/users"))
    assert not allowed(authz, request(path=b"//admin/users?x"))


def test_header_conditions_with_values_prefixes_and_not_values() -> None:
    authz = Authz(
        [
            policy(
                "allow",
                {"when": [{"header": "x-tenant", "values": ["acme", "beta-*"]}]},
                {"when": [{"header": "x-debug", "not_values": ["1"]}], "to": {"paths": ["/ok"]}},
            )
        ]
    )
    assert allowed(authz, request(headers=[(b"X-Tenant", b"acme")]))
    assert allowed(authz, request(headers=[(b"X-Tenant", b"beta-7")]))
    assert not allowed(authz, request(headers=[(b"X-Tenant", b"other")]))
    assert not allowed(authz, request())
    assert allowed(authz, request(path=b"/ok"))
    assert not allowed(authz, request(path=b"/ok", headers=[(b"X-Debug", b"1")]))


def test_claim_conditions_read_verified_jwt_claims_including_lists_and_nesting() -> None:
    authz = Authz(
        [
            policy(
                "allow",
                {"when": [{"claim": "iss", "values": ["https://issuer.test"]},
                          {"claim": "realm.roles", "values": ["admin"]}]},
            )
        ]
    )  # fmt: skip
    good = {"iss": "https://issuer.test", "realm": {"roles": ["user", "admin"]}}
    assert allowed(authz, request(claims=good))
    assert not allowed(authz, request(claims={**good, "realm": {"roles": ["user"]}}))
    assert not allowed(authz, request(claims=None))


def test_claim_value_shapes() -> None:
    assert claim_value({"a": {"b": 1}}, "a.b") == ["1"]
    assert claim_value({"a": True}, "a") == ["true"]
    assert claim_value({"a": [1, "x"]}, "a") == ["1", "x"]
    assert claim_value({"a": 1}, "a.b") is None
    assert claim_value(None, "a") is None


def test_condition_config_needs_one_source_and_some_values() -> None:
    with pytest.raises(ValidationError, match="exactly one of header or claim"):
        AccessCondition.model_validate({"header": "a", "claim": "b", "values": ["x"]})
    with pytest.raises(ValidationError, match="values or not_values"):
        AccessCondition.model_validate({"header": "a"})


_METHODS = st.sampled_from([b"GET", b"POST", b"DELETE", b"get"])
_PATTERNS = st.sampled_from(["/a", "/a/*", "*.json", "/a/*/c", "/**/c", "/b?", "/"])
_PATHS = st.sampled_from(
    [b"/", b"/a", b"/a/b", b"/a/b/c", b"/x.json", b"/a/../b1", b"//a/x/c", b"/bz?q=1", b"/b"]
)
_OPERATION_RULES = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "to": st.fixed_dictionaries(
                {},
                optional={
                    "methods": st.lists(st.sampled_from(["GET", "POST", "DELETE"]), min_size=1),
                    "paths": st.lists(_PATTERNS, min_size=1, max_size=3),
                },
            )
        },
    ),
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["allow", "deny"]), _OPERATION_RULES), max_size=3),
    st.lists(st.tuples(_METHODS, _PATHS), min_size=1, max_size=6),
)
def test_policies_on_method_and_path_decide_as_rule_by_rule(
    policies: list[tuple[str, list[dict[str, Any]]]], requests: list[tuple[bytes, bytes]]
) -> None:
    compiled = Authz([policy(action, *rules) for action, rules in policies])
    # A deny rule no request matches, on the caller: the rules are then tried
    # one by one, which is the reference the compiled table must agree with.
    never = policy("deny", {"from": {"principals": ["nobody"]}})
    by_rule = Authz([policy(action, *rules) for action, rules in policies] + [never])
    for method, path in requests:
        expected = by_rule.on_request(request(method=method, path=path))
        assert compiled.on_request(request(method=method, path=path)) is expected
    assert list(compiled.counters.items()) == list(by_rule.counters.items())


@given(st.binary(max_size=12).map(lambda b: bytes(b"/.%a?"[x % 5] for x in b)))
def test_plain_path_finds_exactly_what_normalisation_would_look_at(path: bytes) -> None:
    assert plain_path(path) is not (b"%" in path or b"/." in path or b"//" in path)


def _normalized_by_membership(path: bytes) -> bytes:
    """Normalisation written plainly with ``in``: the reference for the fast tests."""
    path = path.partition(b"?")[0]
    if b"%2e" in path or b"%2E" in path:
        path = path.replace(b"%2e", b".").replace(b"%2E", b".")
    if b"/." not in path and b"//" not in path:
        return path or b"/"
    out: list[bytes] = []
    for segment in path.split(b"/"):
        if segment in (b"", b"."):
            continue
        if segment == b"..":
            if out:
                out.pop()
            continue
        out.append(segment)
    trailing = path.endswith((b"/", b"/.", b"/.."))
    return b"/" + b"/".join(out) + (b"/" if trailing and out else b"")


@given(st.lists(st.sampled_from([b"/", b".", b"%2e", b"%2E", b"%20", b"a", b"?"]), max_size=10))
def test_normalisation_agrees_with_its_plain_definition(parts: list[bytes]) -> None:
    path = b"".join(parts)
    assert normalize_path(path) == _normalized_by_membership(path)
