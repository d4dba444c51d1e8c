"""SPIFFE IDs: the mesh's shape and the spec's rules."""

from __future__ import annotations

import pytest

from meshproxy.security.spiffe import IdentityError, SpiffeId, peer_identity

ID = "spiffe://cluster.local/ns/shop/sa/reviews"


def test_a_mesh_id_round_trips() -> None:
    parsed = SpiffeId.parse(ID)
    assert (parsed.trust_domain, parsed.namespace, parsed.service) == (
        "cluster.local",
        "shop",
        "reviews",
    )
    assert str(parsed) == ID


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
