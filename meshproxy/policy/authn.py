"""JWT authentication: verify a bearer token against an issuer's JWKS, expose its claims.

The built-in ``jwt`` filter (``filters: [{name: jwt, config: {...}}]``) runs
before authz.  A valid token's payload lands in ``ctx.claims`` (for authz
``when: [{claim: ...}]`` and later filters); an invalid one — bad signature,
unknown key, wrong issuer or audience, expired, not yet valid — is refused
with ``401`` and ``WWW-Authenticate: Bearer error="invalid_token"``.
Signatures are checked by PyJWT with the key the JWKS names by ``kid`` and
only the configured asymmetric algorithms; ``exp``/``nbf`` are checked here
against the injected wall clock with ``clock_skew`` of leeway.

Keys: a JWKS file is read when the filter is built and re-read when stale; a
JWKS URL is fetched on first use and then every ``jwks_refresh``.  A token
whose ``kid`` is unknown triggers one early refresh (key rotation), at most
every ``MIN_REFETCH`` seconds.  Fetches are shared by concurrent requests and
happen on the chain's slow path; a failed fetch keeps the old keys.
Verified tokens are remembered (bounded) so a client reusing its token costs
a dict lookup plus the expiry check.

It must not block the loop: file reads go to a thread, URLs through aiohttp.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from jwt import PyJWK, PyJWKSet

from meshproxy.config.filters import JwtConfig
from meshproxy.policy.chain import RequestContext
from meshproxy.policy.counters import Counters
from meshproxy.policy.reply import LocalReply

log = logging.getLogger("meshproxy.policy")

MIN_REFETCH = 30.0
RETRY_FAILED_FETCH = 5.0
SEEN_TOKENS = 4096


def unauthorized(reason: str) -> LocalReply:
    return LocalReply(401, reason, ((b"WWW-Authenticate", b'Bearer error="invalid_token"'),))


MISSING = LocalReply(401, "missing bearer token", ((b"WWW-Authenticate", b"Bearer"),))
NO_KEYS = unauthorized("signing keys unavailable")


class JwksError(Exception):
    pass


def parse_jwks(data: bytes | str) -> dict[str | None, PyJWK]:
    """JWKS document -> keys by ``kid`` (keys without one under None)."""
    try:
        keyset = PyJWKSet.from_dict(json.loads(data))
    except (ValueError, TypeError, jwt.PyJWTError) as exc:
        raise JwksError(f"invalid JWKS: {exc}") from None
    return {key.key_id: key for key in keyset.keys}


class KeyCache:
    """Keys and when they were fetched (sans-IO: callers pass ``now``)."""

    __slots__ = ("fetched_at", "keys", "last_attempt", "refresh")

    def __init__(self, refresh: float) -> None:
        self.refresh = refresh
        self.keys: dict[str | None, PyJWK] = {}
        # None: keys loaded when the filter was built, fresh from the first look.
        self.fetched_at: float | None = -math.inf
        self.last_attempt = -math.inf

    def fresh(self, now: float) -> bool:
        if self.fetched_at is None:
            self.fetched_at = self.last_attempt = now
        return now - self.fetched_at < self.refresh

    def may_fetch(self, now: float, early: bool) -> bool:
        """Early fetches (unknown kid) at most every MIN_REFETCH; failed ones retried
        after RETRY_FAILED_FETCH."""
        gap = MIN_REFETCH if early else RETRY_FAILED_FETCH
        return now - self.last_attempt >= gap

    def store(self, keys: dict[str | None, PyJWK], now: float | None) -> None:
        self.keys = keys
        self.fetched_at = now

    def key_for(self, kid: str | None) -> PyJWK | None:
        key = self.keys.get(kid)
        if key is None and kid is None and len(self.keys) == 1:
            key = next(iter(self.keys.values()))
        return key


class JwtFilter:
    name = "jwt"
    stage = "authn"
    Config = JwtConfig

    def __init__(
        self,
        config: JwtConfig,
        counters: Counters | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.counters = counters if counters is not None else Counters()
        self.clock = clock
        self.cache = KeyCache(config.jwks_refresh)
        self._header = config.header.lower().encode("latin-1")
        self._fetching: asyncio.Future[None] | None = None
        self._seen: dict[str, tuple[dict[str, Any], float]] = {}
        self._session: aiohttp.ClientSession | None = None
        if config.jwks_file is not None:
            # Read now: a missing or broken file refuses the snapshot, not requests.
            try:
                text = Path(config.jwks_file).read_bytes()
            except OSError as exc:
                raise JwksError(f"cannot read jwks_file: {exc}") from None
            self.cache.store(parse_jwks(text), None)

    # -- request hook --------------------------------------------------------

    def on_request(self, ctx: RequestContext) -> Any:
        raw = ctx.header(self._header)
        if raw is None:
            return MISSING if self.config.require_token else None
        scheme, _, token_bytes = raw.partition(b" ")
        if scheme.lower() != b"bearer" or not token_bytes.strip():
            return self._refuse("malformed authorization header")
        token = token_bytes.strip().decode("latin-1")
        seen = self._seen.get(token)
        if seen is not None:
            claims, exp = seen
            if self.clock() < exp + self.config.clock_skew:
                ctx.claims = claims
                return None
            del self._seen[token]
        if self.cache.fresh(ctx.now) or not self.cache.may_fetch(ctx.now, early=False):
            result = self._verify(token, ctx)
            if result is not _UNKNOWN_KID:
                return result
            if not self.cache.may_fetch(ctx.now, early=True):
                return self._refuse("unknown signing key")
        return self._fetch_then_verify(token, ctx)

    async def _fetch_then_verify(self, token: str, ctx: RequestContext) -> LocalReply | None:
        await self.refresh(ctx.now)
        result = self._verify(token, ctx)
        if result is _UNKNOWN_KID:
            return self._refuse("unknown signing key" if self.cache.keys else "no signing keys")
        return result  # type: ignore[return-value]

    def _verify(self, token: str, ctx: RequestContext) -> LocalReply | object | None:
        config = self.config
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return self._refuse("malformed token")
        kid = header.get("kid")
        key = self.cache.key_for(kid if isinstance(kid, str) else None)
        if key is None:
            return _UNKNOWN_KID
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=config.algorithms,
                audience=config.audiences or None,
                issuer=config.issuer,
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": bool(config.audiences),
                    "require": ["iss", "exp"] if config.require_exp else ["iss"],
                },
            )
        except jwt.InvalidSignatureError:
            return self._refuse("invalid signature")
        except jwt.InvalidAlgorithmError:
            return self._refuse("algorithm not allowed")
        except jwt.InvalidIssuerError:
            return self._refuse("wrong issuer")
        except jwt.InvalidAudienceError:
            return self._refuse("wrong audience")
        except jwt.PyJWTError as exc:
            return self._refuse(f"invalid token: {exc}"[:80])
        now = self.clock()
        skew = config.clock_skew
        exp = claims.get("exp")
        nbf = claims.get("nbf")
        if exp is not None and (not _is_number(exp) or now >= exp + skew):
            return self._refuse("token expired")
        if nbf is not None and (not _is_number(nbf) or now + skew < nbf):
            return self._refuse("token not yet valid")
        ctx.claims = claims
        if len(self._seen) >= SEEN_TOKENS:
            self._seen.clear()
        self._seen[token] = (claims, float(exp) if exp is not None else math.inf)
        return None

    def _refuse(self, reason: str) -> LocalReply:
        self.counters.incr("jwt_refused", reason.partition(":")[0])
        return unauthorized(reason)

    # -- keys ----------------------------------------------------------------

    async def refresh(self, now: float) -> None:
        """Fetch the keys once for every request waiting on them (``now``: the
        loop time of the request that found them stale)."""
        if self._fetching is None:
            self._fetching = asyncio.ensure_future(self._fetch(now))
        fetching = self._fetching
        try:
            await asyncio.shield(fetching)
        finally:
            if fetching.done() and self._fetching is fetching:
                self._fetching = None

    async def _fetch(self, now: float) -> None:
        config = self.config
        self.cache.last_attempt = now
        try:
            async with asyncio.timeout(config.jwks_timeout):
                if config.jwks_file is not None:
                    data = await asyncio.to_thread(Path(config.jwks_file).read_bytes)
                else:
                    data = await self._get(config.jwks_url or "")
            self.cache.store(parse_jwks(data), now)
        except (OSError, TimeoutError, JwksError, ValueError, aiohttp.ClientError) as exc:
            self.counters.incr("jwks_fetch_errors")
            log.warning("jwks fetch failed issuer=%s error=%s", config.issuer, exc)

    async def _get(self, url: str) -> bytes:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.get(url) as resp:
            if resp.status != 200:
                raise JwksError(f"jwks_url answered {resp.status}")
            body: bytes = await resp.read()
            return body

    async def aclose(self) -> None:
        if self._fetching is not None:
            self._fetching.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_UNKNOWN_KID = object()
