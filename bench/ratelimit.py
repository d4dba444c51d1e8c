"""What a local rate-limit decision costs: nanoseconds per request through the chain.

Run ``python -m bench.ratelimit``.  Cases, each timed over a batch of
requests with fresh contexts built outside the timed loop:

* ``empty chain``: ``FilterChain.on_request`` with nothing configured (the
  floor the data path pays when no policy applies);
* ``one key``: one client address, always admitted (rate far above the load);
* ``10k keys``: 10 000 client addresses in turn (a bucket lookup each, the
  table's LRU bookkeeping included);
* ``header key``: the key read from the 8th header without a dict;
* ``denied``: every request over the limit (the 429 reply with its headers
  is built per refusal);
* ``key flood``: every request a new key, the 100k-key table at its cap (the
  eviction sweeps amortised in).

Medians of interleaved rounds (BENCHMARKS.md: machines here are noisy).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from meshproxy.config.policy import RateLimit
from meshproxy.policy import ChainEntry, FilterChain, RequestContext
from meshproxy.policy.ratelimit import LocalRateLimit

HEADERS = [
    (b"Host", b"ratings"),
    (b"User-Agent", b"bench/1.0"),
    (b"Accept", b"*/*"),
    (b"Accept-Encoding", b"gzip"),
    (b"Connection", b"keep-alive"),
    (b"X-Request-Id", b"4f9c2d1e-8b7a-4c3d-9e2f-1a0b9c8d7e6f"),
    (b"Cookie", b"session=abc123"),
    (b"X-User", b"user-42"),
]
BATCH = 20_000


def chain_of(**limit: object) -> FilterChain:
    if not limit:
        return FilterChain([])
    config = RateLimit.model_validate(limit)
    return FilterChain([ChainEntry("ratelimit", LocalRateLimit([config]))])


def contexts(ips: Callable[[int], str]) -> list[RequestContext]:
    return [
        RequestContext(b"GET", b"/ratings/1", HEADERS, client_ip=ips(i), now=i * 1e-6)
        for i in range(BATCH)
    ]


def cases() -> dict[str, tuple[FilterChain, Callable[[], list[RequestContext]]]]:
    huge = {"requests_per_second": 1e12, "burst": 1_000_000_000}
    one = contexts(lambda i: "10.0.0.1")
    many = contexts(lambda i: f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}")
    flood_chain = chain_of(key="client_address", **huge)
    counter = [0]

    def flood() -> list[RequestContext]:
        base = counter[0]
        counter[0] += BATCH
        return contexts(lambda i: f"k{base + i}")

    return {
        "empty chain": (chain_of(), lambda: one),
        "one key": (chain_of(key="client_address", **huge), lambda: one),
        "10k keys": (chain_of(key="client_address", **huge), lambda: many[:10_000] * 2),
        "header key": (chain_of(key="header", header="x-user", **huge), lambda: one),
        "denied": (chain_of(key="client_address", requests_per_second=1, burst=1), lambda: one),
        "key flood": (flood_chain, flood),
    }


def ns_per_request(chain: FilterChain, batch: list[RequestContext]) -> float:
    on_request = chain.on_request
    start = time.perf_counter_ns()
    for ctx in batch:
        on_request(ctx)
    return (time.perf_counter_ns() - start) / len(batch)


def main(rounds: int = 5) -> None:
    table = cases()
    # Fill the flood table to its cap first: the steady state is what matters.
    flood_chain, flood = table["key flood"]
    for _ in range(6):
        ns_per_request(flood_chain, flood())
    results: dict[str, list[float]] = {name: [] for name in table}
    for _ in range(rounds):
        for name, (chain, batch) in table.items():
            results[name].append(ns_per_request(chain, batch()))
    print(f"local rate-limit decision, ns per request, median of {rounds} rounds of {BATCH}")
    for name in table:
        print(f"{name:<12} {statistics.median(results[name]):>8.0f}")


if __name__ == "__main__":
    main()
