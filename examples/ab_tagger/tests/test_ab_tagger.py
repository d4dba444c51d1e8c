"""The A/B tagger: stable buckets, the configured share, headers both ways."""

from __future__ import annotations

import pytest
from ab_tagger import AbConfig, AbTagger
from pydantic import ValidationError

from meshproxy.policy import ChainEntry, FilterChain, RequestContext


def request(user: bytes | None = None, ip: str = "10.0.0.1") -> RequestContext:
    headers = [(b"X-User", user)] if user is not None else []
    return RequestContext(b"GET", b"/", headers, client_ip=ip)


def test_one_user_always_gets_the_same_bucket() -> None:
    tagger = AbTagger(AbConfig())
    first = tagger.bucket(b"ann")
    assert all(tagger.bucket(b"ann") == first for _ in range(10))


def test_the_share_of_b_follows_percent_b() -> None:
    users = [b"user%d" % i for i in range(2000)]
    for percent in (0, 10, 50, 100):
        tagger = AbTagger(AbConfig(percent_b=percent))
        share = sum(tagger.bucket(u) == b"b" for u in users) / len(users)
        assert abs(share - percent / 100) < 0.05


def test_request_and_response_carry_the_bucket_through_a_chain() -> None:
    tagger = AbTagger(AbConfig(percent_b=100))
    chain = FilterChain([ChainEntry("ab_tagger", tagger)])
    ctx = request(b"ann")
    assert chain.on_request(ctx) is None
    assert ctx.request_extra == [(b"x-ab-bucket", b"b")]
    ctx.status = 200
    assert chain.on_response(ctx) is None
    assert ctx.response_extra == [(b"x-ab-bucket", b"b")]


def test_without_the_key_header_the_client_address_decides() -> None:
    tagger = AbTagger(AbConfig(percent_b=50))
    ctx = request(ip="192.0.2.7")
    tagger.on_request(ctx)
    assert ctx.scratch["ab_bucket"] == tagger.bucket(b"192.0.2.7")


def test_config_is_validated() -> None:
    with pytest.raises(ValidationError):
        AbConfig.model_validate({"percent_b": 101})
    with pytest.raises(ValidationError):
        AbConfig.model_validate({"unknown": 1})
