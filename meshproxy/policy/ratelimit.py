"""Local rate limits: a token bucket per key value, decided in memory in microseconds.

``TokenBucket.take(now)`` is sans-IO: the caller passes the loop's monotonic
time.  ``BucketTable`` keeps one bucket per key with a bound (100k keys by
default): when full it first drops buckets that are full again (their keys
have been idle long enough to have forgotten every request, so dropping them
changes no decision), then the least recently used.  ``LocalRateLimit`` is the
filter: for each configured limit, key -> bucket -> take; the first empty
bucket answers 429 with ``Retry-After`` and the IETF draft ``RateLimit-Policy``
/ ``RateLimit`` headers (draft-ietf-httpapi-ratelimit-headers, structured
field form: ``"name";q=<quota>;w=<window>`` and ``"name";r=<remaining>;t=<reset>``).

A request whose key is absent (no such header, no peer identity yet) is not
limited by that limit, as Envoy's descriptors do.

It must not do I/O (the shared limit is ``redis_limit``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

from meshproxy.config.policy import RateLimit
from meshproxy.policy.chain import RequestContext
from meshproxy.policy.counters import Counters
from meshproxy.policy.reply import LocalReply

DEFAULT_MAX_KEYS = 100_000

KeyOf = Callable[[RequestContext], Hashable | None]


class _NoKey:
    """Equal to no key: the ``BucketTable`` remembers no last key yet."""

    __slots__ = ()


_NO_KEY = _NoKey()


class TokenBucket:
    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now

    def take(self, now: float) -> tuple[bool, float, int]:
        """Take one token: ``(allowed, retry_after seconds, remaining tokens)``."""
        if self.admit(now):
            return True, 0.0, int(self.tokens)
        return False, self.retry_after(), 0

    def admit(self, now: float) -> bool:
        """Take one token if there is one (the hot path: no tuple, no conversion)."""
        tokens = self.tokens
        if now > self.stamp:
            tokens += (now - self.stamp) * self.rate
            if tokens > self.capacity:
                tokens = self.capacity
            self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False

    def retry_after(self) -> float:
        """Seconds until the next token, right after ``admit`` refused one."""
        return (1.0 - self.tokens) / self.rate

    def is_full(self, now: float) -> bool:
        return self.tokens + (now - self.stamp) * self.rate >= self.capacity


class BucketTable:
    """Token buckets by key, at most ``max_keys`` of them."""

    __slots__ = ("_buckets", "_last", "_last_key", "capacity", "max_keys", "rate")

    def __init__(self, rate: float, capacity: float, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if rate <= 0 or capacity < 1 or max_keys < 1:
            raise ValueError("rate must be positive, capacity and max_keys at least 1")
        self.rate = rate
        self.capacity = capacity
        self.max_keys = max_keys
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()
        # The most recently used key and its bucket: it is already last in the
        # LRU order, so a run of requests from one key costs one comparison.
        self._last_key: Hashable = _NO_KEY
        self._last = TokenBucket(rate, capacity, 0.0)  # a stand-in, never matched

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._buckets

    def bucket(self, key: Hashable, now: float) -> TokenBucket:
        """The bucket of ``key`` (made full when new), now the most recently used."""
        if key == self._last_key:
            return self._last
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self.max_keys:
                self._evict(now)
            bucket = buckets[key] = TokenBucket(self.rate, self.capacity, now)
        else:
            buckets.move_to_end(key)
        self._last_key = key
        self._last = bucket
        return bucket

    def take(self, key: Hashable, now: float) -> tuple[bool, float, int]:
        return self.bucket(key, now).take(now)

    def _evict(self, now: float) -> None:
        """Free a tenth of the table so the next evictions are far apart
        (amortised O(1) per new key)."""
        buckets = self._buckets
        target = self.max_keys - max(1, self.max_keys // 10)
        needed = len(buckets) - target
        # Oldest first: idle keys gather there, so the scan usually stops early.
        full = []
        for key, bucket in buckets.items():
            if bucket.is_full(now):
                full.append(key)
                if len(full) == needed:
                    break
        for key in full:
            del buckets[key]
        while len(buckets) > target:
            buckets.popitem(last=False)


def key_function(limit: RateLimit) -> KeyOf:
    """How a limit finds its key in a request."""
    kind = limit.key
    if kind == "client_address":
        return lambda ctx: ctx.client_ip or None
    if kind == "route":
        return lambda ctx: ctx.route
    if kind == "peer":
        return lambda ctx: ctx.peer
    if kind == "header":
        assert limit.header is not None
        name = limit.header.lower().encode("latin-1")
        return lambda ctx: ctx.header(name)
    return lambda ctx: ""


def limit_name(limit: RateLimit) -> str:
    return limit.name or (f"header-{limit.header.lower()}" if limit.header else limit.key)


def capacity_of(limit: RateLimit) -> float:
    return (
        float(limit.burst) if limit.burst else max(1.0, float(math.ceil(limit.requests_per_second)))
    )


def policy_header(limit: RateLimit) -> bytes:
    """``RateLimit-Policy``: the bucket size over the time it takes to refill."""
    capacity = capacity_of(limit)
    window = max(1, math.ceil(capacity / limit.requests_per_second))
    return b'"%s";q=%d;w=%d' % (limit_name(limit).encode(), int(capacity), window)


def too_many(name: bytes, policy: bytes, retry_after: float) -> LocalReply:
    wait = max(1, math.ceil(retry_after))
    return LocalReply(
        429,
        "rate limited",
        (
            (b"Retry-After", b"%d" % wait),
            (b"RateLimit-Policy", policy),
            (b"RateLimit", b'"%s";r=0;t=%d' % (name, wait)),
        ),
    )


class _Limit:
    __slots__ = ("by_client", "key_of", "label", "name", "policy", "replies", "table")

    def __init__(self, limit: RateLimit, max_keys: int) -> None:
        self.label = limit_name(limit)
        self.name = self.label.encode()
        # The usual key is read inline by the filter; the others through ``key_of``.
        self.by_client = limit.key == "client_address"
        self.key_of = key_function(limit)
        self.policy = policy_header(limit)
        self.table = BucketTable(limit.requests_per_second, capacity_of(limit), max_keys)
        # 429s by whole seconds to wait: a refusal storm must not cost more than success.
        self.replies: dict[int, LocalReply] = {}

    def refusal(self, retry_after: float) -> LocalReply:
        wait = max(1, math.ceil(retry_after))
        reply = self.replies.get(wait)
        if reply is None:
            reply = too_many(self.name, self.policy, wait)
            if len(self.replies) < 64:
                self.replies[wait] = reply
        return reply


class LocalRateLimit:
    """The built-in local rate-limit filter (request phase only, never async)."""

    name = "ratelimit"

    def __init__(
        self,
        limits: Sequence[RateLimit],
        counters: Counters | None = None,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self._limits = tuple(_Limit(limit, max_keys) for limit in limits if limit.scope == "local")
        self.counters = counters if counters is not None else Counters()

    def on_request(self, ctx: RequestContext) -> LocalReply | None:
        now = ctx.now
        for limit in self._limits:
            if limit.by_client:
                key: Hashable | None = ctx.client_ip
                if not key:
                    continue
            else:
                key = limit.key_of(ctx)
                if key is None:
                    continue
            table = limit.table
            # The table's last bucket read inline: a keep-alive client's run of
            # requests costs no call to find it.
            bucket = table._last if key == table._last_key else table.bucket(key, now)
            if not bucket.admit(now):
                self.counters.incr("ratelimit_denied", limit.label)
                return limit.refusal(bucket.retry_after())
        return None
