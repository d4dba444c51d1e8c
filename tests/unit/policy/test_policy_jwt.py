"""The JWT filter: signatures, issuer, audience, time, keys from a file or a URL."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web

from meshproxy.config.filters import JwtConfig
from meshproxy.policy import LocalReply, Pending, RequestContext
from meshproxy.policy.authn import JwksError, JwtFilter
from tests.unit.policy.jwt_keys import ISSUER, SigningKey, claims, jwks

NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey("k1", "RSA")


@pytest.fixture(scope="module")
def ec_key() -> SigningKey:
    return SigningKey("k2", "EC")


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, *keys: SigningKey, clock: Clock | None = None, **kw: Any) -> JwtFilter:
    path = tmp_path / "jwks.json"
    path.write_text(jwks(*keys))
    config = JwtConfig.model_validate(
        {"issuer": ISSUER, "audiences": ["ratings"], "jwks_file": str(path), **kw}
    )
    return JwtFilter(config, clock=clock or Clock())


def bearer(token: str, now: float = 0.0) -> RequestContext:
    return RequestContext(b"GET", b"/", [(b"Authorization", b"Bearer " + token.encode())], now=now)


def refused(result: object, reason: str) -> bool:
    return (
        isinstance(result, LocalReply)
        and result.status == 401
        and result.reason == reason
        and result.header(b"www-authenticate") is not None
    )


def test_a_valid_token_passes_and_its_claims_are_on_the_context(
    tmp_path: Path, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    f = make(tmp_path, rsa_key, ec_key)
    for key in (rsa_key, ec_key):
        c = bearer(key.token(claims(NOW, role="admin")))
        assert f.on_request(c) is None
        assert c.claims is not None
        assert (c.claims["sub"], c.claims["role"]) == ("alice", "admin")


def test_missing_token_is_refused_unless_optional(tmp_path: Path, rsa_key: SigningKey) -> None:
    no_token = RequestContext(b"GET", b"/", [])
    result = make(tmp_path, rsa_key).on_request(no_token)
    assert isinstance(result, LocalReply) and result.status == 401
    assert make(tmp_path, rsa_key, require_token=False).on_request(no_token) is None
    assert no_token.claims is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"exp": NOW - 61}, "token expired"),
        ({"nbf": NOW + 61}, "token not yet valid"),
        ({"iss": "https://evil.test"}, "wrong issuer"),
        ({"aud": "other"}, "wrong audience"),
    ],
)
def test_bad_claims_are_refused_with_401(
    tmp_path: Path, rsa_key: SigningKey, change: dict[str, Any], reason: str
) -> None:
    f = make(tmp_path, rsa_key)
    assert refused(f.on_request(bearer(rsa_key.token(claims(NOW, **change)))), reason)
    assert f.counters.get("jwt_refused", reason) == 1


def test_clock_skew_is_tolerated_both_ways(tmp_path: Path, rsa_key: SigningKey) -> None:
    f = make(tmp_path, rsa_key, clock_skew="60s")
    assert f.on_request(bearer(rsa_key.token(claims(NOW, exp=NOW - 30)))) is None
    assert f.on_request(bearer(rsa_key.token(claims(NOW, nbf=NOW + 30)))) is None


def test_a_token_without_exp_is_refused_when_exp_is_required(
    tmp_path: Path, rsa_key: SigningKey
) -> None:
    body = claims(NOW)
    del body["exp"]
    result = make(tmp_path, rsa_key).on_request(bearer(rsa_key.token(body)))
    assert isinstance(result, LocalReply) and result.status == 401
    assert (
        make(tmp_path, rsa_key, require_exp=False).on_request(bearer(rsa_key.token(body))) is None
    )


def test_a_token_signed_by_another_key_is_refused(tmp_path: Path, rsa_key: SigningKey) -> None:
    impostor = SigningKey("k1", "RSA")  # same kid, different key
    f = make(tmp_path, rsa_key)
    assert refused(f.on_request(bearer(impostor.token(claims(NOW)))), "invalid signature")


def test_a_tampered_payload_is_refused(tmp_path: Path, rsa_key: SigningKey) -> None:
    head, _payload, sig = rsa_key.token(claims(NOW)).split(".")
    forged = base64.urlsafe_b64encode(json.dumps(claims(NOW, sub="root")).encode()).rstrip(b"=")
    f = make(tmp_path, rsa_key)
    assert refused(f.on_request(bearer(f"{head}.{forged.decode()}.{sig}")), "invalid signature")


def test_unsigned_and_symmetric_tokens_are_refused(tmp_path: Path, rsa_key: SigningKey) -> None:
    f = make(tmp_path, rsa_key)
    unsigned = jwt.encode(claims(NOW), None, algorithm="none", headers={"kid": "k1"})
    result = f.on_request(bearer(unsigned))
    assert isinstance(result, LocalReply) and result.status == 401
    hmac = jwt.encode(claims(NOW), "a-secret-of-32-bytes-or-more-for-hs", "HS256", {"kid": "k1"})
    result = f.on_request(bearer(hmac))
    assert isinstance(result, LocalReply) and result.status == 401


def test_malformed_headers_and_tokens_are_refused(tmp_path: Path, rsa_key: SigningKey) -> None:
    f = make(tmp_path, rsa_key)
    basic = RequestContext(b"GET", b"/", [(b"Authorization", b"Basic YTpi")])
    assert refused(f.on_request(basic), "malformed authorization header")
    assert refused(f.on_request(bearer("not.a.jwt")), "malformed token")


def test_a_verified_token_is_remembered_until_it_expires(
    tmp_path: Path, rsa_key: SigningKey
) -> None:
    clock = Clock()
    f = make(tmp_path, rsa_key, clock=clock, clock_skew="0s")
    token = rsa_key.token(claims(NOW, exp=NOW + 10))
    assert f.on_request(bearer(token)) is None
    c = bearer(token)
    assert f.on_request(c) is None and c.claims is not None
    clock.now = NOW + 11
    assert refused(f.on_request(bearer(token)), "token expired")


async def test_an_unknown_kid_rereads_the_jwks_once_for_key_rotation(
    tmp_path: Path, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    f = make(tmp_path, rsa_key)
    assert f.on_request(bearer(rsa_key.token(claims(NOW)), now=0.0)) is None
    (tmp_path / "jwks.json").write_text(jwks(rsa_key, ec_key))  # the issuer rotates
    pending = f.on_request(bearer(ec_key.token(claims(NOW)), now=100.0))
    assert pending is not None and not isinstance(pending, LocalReply)
    assert await pending is None
    # A kid that is still unknown right after a refetch is refused without another.
    stranger = SigningKey("k9", "EC")
    assert refused(
        f.on_request(bearer(stranger.token(claims(NOW)), now=101.0)), "unknown signing key"
    )


def test_a_missing_jwks_file_refuses_the_filter(tmp_path: Path) -> None:
    config = JwtConfig(issuer=ISSUER, jwks_file=str(tmp_path / "absent.json"))
    with pytest.raises(JwksError, match="cannot read"):
        JwtFilter(config)
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(JwksError, match="invalid JWKS"):
        JwtFilter(JwtConfig(issuer=ISSUER, jwks_file=str(tmp_path / "bad.json")))


def test_jwt_config_is_checked() -> None:
    with pytest.raises(ValueError, match="exactly one of jwks_file or jwks_url"):
        JwtConfig.model_validate({"issuer": ISSUER})
    with pytest.raises(ValueError, match="subset"):
        JwtConfig.model_validate({"issuer": ISSUER, "jwks_file": "x", "algorithms": ["HS256"]})
    with pytest.raises(ValueError, match="http"):
        JwtConfig.model_validate({"issuer": ISSUER, "jwks_url": "ftp://x"})


@pytest.fixture
async def jwks_server() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    state: dict[str, Any] = {"body": "{}", "hits": 0, "status": 200}

    async def handler(request: web.Request) -> web.Response:
        state["hits"] += 1
        return web.Response(text=state["body"], status=state["status"])

    app = web.Application()
    app.router.add_get("/jwks", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/jwks", state
    finally:
        await runner.cleanup()


async def run(f: JwtFilter, c: RequestContext) -> Any:
    result = f.on_request(c)
    if result is not None and not isinstance(result, LocalReply):
        assert not isinstance(result, Pending)
        result = await result
    return result


async def test_keys_from_a_url_are_fetched_once_cached_and_refreshed(
    jwks_server: tuple[str, dict[str, Any]], rsa_key: SigningKey
) -> None:
    url, state = jwks_server
    state["body"] = jwks(rsa_key)
    config = JwtConfig(issuer=ISSUER, jwks_url=url, jwks_refresh="60s")
    f = JwtFilter(config, clock=Clock())
    try:
        first = f.on_request(bearer(rsa_key.token(claims(NOW)), now=0.0))
        assert first is not None and not isinstance(first, LocalReply)  # must fetch: async
        assert await first is None
        assert f.on_request(bearer(rsa_key.token(claims(NOW, n=1)), now=30.0)) is None
        assert state["hits"] == 1
        assert await run(f, bearer(rsa_key.token(claims(NOW, n=2)), now=61.0)) is None
        assert state["hits"] == 2
    finally:
        await f.aclose()


async def test_a_failed_fetch_keeps_the_old_keys_and_a_first_failure_refuses(
    jwks_server: tuple[str, dict[str, Any]], rsa_key: SigningKey
) -> None:
    url, state = jwks_server
    state["status"] = 500
    f = JwtFilter(JwtConfig(issuer=ISSUER, jwks_url=url, jwks_refresh="60s"), clock=Clock())
    try:
        result = await run(f, bearer(rsa_key.token(claims(NOW)), now=0.0))
        assert refused(result, "no signing keys")
        assert f.counters.get("jwks_fetch_errors") == 1
        state["status"] = 200
        state["body"] = jwks(rsa_key)
        assert await run(f, bearer(rsa_key.token(claims(NOW, n=1)), now=10.0)) is None
        state["status"] = 500
        # Stale keys and a failing issuer: the old keys still verify.
        assert await run(f, bearer(rsa_key.token(claims(NOW, n=2)), now=100.0)) is None
        assert f.counters.get("jwks_fetch_errors") == 2
    finally:
        await f.aclose()
