"""Building the chain of one listener direction from a snapshot.

Order (DESIGN section 2): local rate limit -> global rate limit ->
authentication filters (``stage = "authn"``, e.g. ``jwt``) -> authz -> user
filters (snapshot order) -> ``tail`` (route and load-balance filters the data
path supplies).  Built-ins with nothing configured are left out, so a service
with no policies costs one empty loop.  Rate limits and access policies are
those of ``service``: on an inbound listener the local service; outbound
chains get only user filters unless the caller passes the target service.

A filter whose constructor fails refuses the snapshot with a ``ConfigError``
naming ``snapshot.filters.N``.  It must not run filters or do I/O beyond what
filter constructors do (the JWT filter reads its JWKS file).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from meshproxy.config.filters import FilterRef
from meshproxy.config.load import ConfigError
from meshproxy.config.snapshot import Snapshot
from meshproxy.policy.authn import JwtFilter
from meshproxy.policy.authz import Authz
from meshproxy.policy.chain import ChainEntry, FilterChain
from meshproxy.policy.counters import Counters
from meshproxy.policy.plugins import filter_config, load_filter_class
from meshproxy.policy.ratelimit import DEFAULT_MAX_KEYS, LocalRateLimit
from meshproxy.policy.redis_limit import GlobalRateLimit


def instantiate(ref: FilterRef, counters: Counters) -> tuple[str, object]:
    cls = load_filter_class(ref.name, ref.path)
    config = filter_config(cls, ref.config)
    if cls is JwtFilter:
        assert config is not None
        return "jwt", JwtFilter(config, counters)  # type: ignore[arg-type]
    filt = cls() if config is None else cls(config)
    return ref.name or ref.path or cls.__name__, filt


def compile_chain(
    snapshot: Snapshot,
    service: str | None,
    direction: Literal["inbound", "outbound"],
    tail: Sequence[ChainEntry] = (),
    counters: Counters | None = None,
    max_keys: int = DEFAULT_MAX_KEYS,
) -> FilterChain:
    counters = counters if counters is not None else Counters()
    entries: list[ChainEntry] = []
    if service is not None:
        limits = [lim for p in snapshot.policies if p.service == service for lim in p.rate_limits]
        if any(lim.scope == "local" for lim in limits):
            entries.append(ChainEntry("ratelimit", LocalRateLimit(limits, counters, max_keys)))
        if any(lim.scope == "global" for lim in limits):
            entries.append(
                ChainEntry("ratelimit_global", GlobalRateLimit(limits, service, counters))
            )
    refs = [r for r in snapshot.filters if r.direction in (direction, "both")]
    user: list[ChainEntry] = []
    authn: list[ChainEntry] = []
    for ref in refs:
        try:
            name, filt = instantiate(ref, counters)
        except Exception as exc:
            # A constructor that fails (unreadable JWKS, a plugin's own check)
            # refuses the snapshot like a validation error would.
            index = snapshot.filters.index(ref)
            raise ConfigError(
                [(f"snapshot.filters.{index}", f"cannot build filter: {exc}")]
            ) from exc
        entry = ChainEntry(name, filt, fail_open=ref.on_error == "allow")
        (authn if getattr(filt, "stage", None) == "authn" else user).append(entry)
    entries.extend(authn)
    if service is not None:
        authz = Authz([a for a in snapshot.access if a.service == service], counters)
        if authz.active:
            entries.append(ChainEntry("authz", authz))
    entries.extend(user)
    entries.extend(tail)
    return FilterChain(entries, counters)
