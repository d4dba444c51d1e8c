"""Global rate limits: one limit shared by every sidecar, kept in Redis with GCRA.

Why GCRA in a Lua script rather than Envoy's fixed windows: it is the token
bucket of the local limits (same ``requests_per_second`` and ``burst``
meaning), it spreads admissions evenly instead of letting each window start
with a burst, and it needs one key holding one number per limit key.  The
script runs atomically in Redis and reads Redis's own clock (``TIME``), so
sidecars with skewed clocks still share one schedule.

GCRA in short: each key stores its "theoretical arrival time" (TAT).  A
request at ``now`` is admitted when ``max(TAT, now) + T - burst*T <= now``
(``T`` = 1/rate) and then moves TAT forward by ``T``.  Times are integer
microseconds.

Redis failures (refused connection, timeout after ``redis.timeout``, any
Redis error) follow the limit's ``on_redis_error``: ``allow`` passes the
request and marks the response ``x-meshproxy-ratelimit: fail-open``; ``deny``
answers 503.  Both are counted.  After a failure the limit decides without
Redis for ``redis.retry_after_error`` so a dead Redis costs no time per request.

It must not hold per-request state beyond the awaited call.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from meshproxy.config.filters import RedisTarget
from meshproxy.config.policy import RateLimit
from meshproxy.policy.chain import RequestContext
from meshproxy.policy.counters import Counters
from meshproxy.policy.ratelimit import (
    capacity_of,
    key_function,
    limit_name,
    policy_header,
    too_many,
)
from meshproxy.policy.reply import LocalReply

log = logging.getLogger("meshproxy.policy")

GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - tolerance
if now < allow_at then
  return {0, allow_at - now, 0}
end
local ttl = math.ceil((new_tat - now) / 1000) + 1
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl)
return {1, 0, math.floor((now - allow_at) / interval)}
"""

FAIL_OPEN_HEADER = (b"x-meshproxy-ratelimit", b"fail-open")
UNAVAILABLE = LocalReply(503, "rate limit unavailable", ((b"Retry-After", b"1"),))


def redis_client(target: RedisTarget) -> aioredis.Redis:
    """A client that fails fast: short timeouts, no retries (the caller decides)."""
    client: aioredis.Redis = aioredis.Redis.from_url(
        target.url,
        socket_timeout=target.timeout,
        socket_connect_timeout=target.timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
    )
    return client


class _Global:
    __slots__ = (
        "down_until",
        "fail_open",
        "interval_us",
        "key_of",
        "name",
        "policy",
        "prefix",
        "retry_after_error",
        "script",
        "timeout",
        "tolerance_us",
    )

    def __init__(self, limit: RateLimit, service: str, script: Any) -> None:
        assert limit.redis is not None
        self.name = limit_name(limit).encode()
        self.key_of = key_function(limit)
        self.policy = policy_header(limit)
        self.interval_us = max(1, round(1_000_000 / limit.requests_per_second))
        self.tolerance_us = round(capacity_of(limit) * self.interval_us)
        self.prefix = f"{limit.redis.prefix}{service}:{limit_name(limit)}:".encode()
        self.timeout = limit.redis.timeout
        self.retry_after_error = limit.redis.retry_after_error
        self.fail_open = limit.on_redis_error == "allow"
        self.script = script
        self.down_until = -math.inf


class GlobalRateLimit:
    """The built-in shared rate-limit filter: always asynchronous (one Redis call
    per applicable limit), so requests it covers take the chain's slow path."""

    name = "ratelimit_global"

    def __init__(
        self, limits: Sequence[RateLimit], service: str, counters: Counters | None = None
    ) -> None:
        self.counters = counters if counters is not None else Counters()
        self._clients: dict[RedisTarget, aioredis.Redis] = {}
        globals_: list[_Global] = []
        for limit in limits:
            if limit.scope != "global" or limit.redis is None:
                continue
            client = self._clients.get(limit.redis)
            if client is None:
                client = self._clients[limit.redis] = redis_client(limit.redis)
            globals_.append(_Global(limit, service, client.register_script(GCRA_LUA)))
        self._limits = tuple(globals_)

    def on_request(self, ctx: RequestContext) -> Any:
        keys = []
        for limit in self._limits:
            key = limit.key_of(ctx)
            if key is not None:
                raw = key if isinstance(key, bytes) else str(key).encode()
                keys.append((limit, limit.prefix + raw))
        if not keys:
            return None
        return self._decide(ctx, keys)

    async def _decide(
        self, ctx: RequestContext, keys: list[tuple[_Global, bytes]]
    ) -> LocalReply | None:
        for limit, key in keys:
            if ctx.now < limit.down_until:
                reply = self._failed(ctx, limit)
            else:
                try:
                    async with asyncio.timeout(limit.timeout * 2):
                        allowed, wait_us, _remaining = await limit.script(
                            keys=[key], args=[limit.interval_us, limit.tolerance_us]
                        )
                except (RedisError, OSError, TimeoutError) as exc:
                    limit.down_until = ctx.now + limit.retry_after_error
                    n = self.counters.incr("ratelimit_redis_errors", limit.name.decode())
                    if n & (n - 1) == 0:
                        log.warning("redis rate limit failed count=%d error=%r", n, exc)
                    reply = self._failed(ctx, limit)
                else:
                    if allowed:
                        continue
                    self.counters.incr("ratelimit_denied", limit.name.decode())
                    return too_many(limit.name, limit.policy, int(wait_us) / 1_000_000)
            if reply is not None:
                return reply
        return None

    def _failed(self, ctx: RequestContext, limit: _Global) -> LocalReply | None:
        if limit.fail_open:
            self.counters.incr("ratelimit_fail_open", limit.name.decode())
            if ctx.response_extra is None or FAIL_OPEN_HEADER not in ctx.response_extra:
                ctx.add_response_header(*FAIL_OPEN_HEADER)
            return None
        self.counters.incr("ratelimit_fail_closed", limit.name.decode())
        return UNAVAILABLE

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
