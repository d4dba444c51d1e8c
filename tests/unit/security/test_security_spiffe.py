"""SPIFFE IDs: the mesh's shape, the spec's rules, and principal matching."""

from __future__ import annotations

import pytest

from meshproxy.security.spiffe import IdentityError, SpiffeId, peer_identity, principal_matches

ID = "spiffe://cluster.local/ns/shop/sa/reviews"


def test_a_mesh_id_round_trips() -> None:
    parsed = SpiffeId.parse(ID)
    assert (parsed.trust_domain, parsed.namespace, parsed.service) == (
        "cluster.local",
        "shop",
        "reviews",
    )
    assert str(parsed) == ID
    assert parsed.principal == "cluster.local/ns/shop/sa/reviews"


@pytest.mark.parametrize(
    "text",
    [
        "https://cluster.local/ns/shop/sa/reviews",
        "spiffe://Cluster.local/ns/shop/sa/reviews",
        "spiffe://cluster.local",
        "spiffe://cluster.local/ns/shop/sa/reviews/extra",
        "spiffe://cluster.local/ns//sa/reviews",
        "spiffe://cluster.local/ns/../sa/reviews",
        "spiffe://cluster.local:8080/ns/shop/sa/reviews",
        "spiffe://user@cluster.local/ns/shop/sa/reviews",
        "spiffe://cluster.local/ns/shop/sa/reviews?x=1",
        "spiffe://cluster.local/ns/shop/sa/re%20views",
        "spiffe://cluster.local/x/shop/sa/reviews",
        "spiffe://cluster.local/ns/" + "a" * 2100 + "/sa/x",
    ],
)
def test_malformed_or_foreign_ids_are_refused(text: str) -> None:
    with pytest.raises(IdentityError):
        SpiffeId.parse(text)


def test_the_peer_identity_is_the_one_uri_san() -> None:
    cert = {"subjectAltName": (("DNS", "reviews"), ("URI", ID))}
    assert peer_identity(cert) == SpiffeId.parse(ID)
    with pytest.raises(IdentityError, match="no SPIFFE ID"):
        peer_identity({"subjectAltName": (("DNS", "reviews"),)})
    with pytest.raises(IdentityError, match="2 URI SANs"):
        peer_identity({"subjectAltName": (("URI", ID), ("URI", ID))})
    with pytest.raises(IdentityError):
        peer_identity(None)


@pytest.mark.parametrize(
    ("pattern", "matches"),
    [
        ("cluster.local/ns/shop/sa/reviews", True),
        (ID, True),
        ("*", True),
        ("cluster.local/ns/shop/*", True),
        ("*/sa/reviews", True),
        ("cluster.local/ns/other/*", False),
        ("cluster.local/ns/shop/sa/review", False),
        ("*/sa/ratings", False),
    ],
)
def test_principal_patterns_match_as_istio_does(pattern: str, matches: bool) -> None:
    assert principal_matches(pattern, SpiffeId.parse(ID)) is matches
