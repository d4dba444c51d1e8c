"""Hosts answered without the route table: a split or a single backend that
every request of the host takes gives the routes the table would select."""

from __future__ import annotations

import random
from collections import Counter

from meshproxy import fastpath as fp
from meshproxy.config import Bootstrap, parse_bootstrap
from meshproxy.resolve import Resolver, Route

SPLIT = """
node: {{id: n1, service: reviews}}
listeners:
  - {{name: out, port: 0}}
snapshot:
  services:
    ratings:
      endpoints:
        - {{address: 10.0.0.1, port: 9001, labels: {{version: v1}}}}
        - {{address: 10.0.0.2, port: 9002, labels: {{version: v2}}}}
        - {{address: 10.0.0.3, port: 9003, labels: {{version: v3}}}}
  policies:
    - service: ratings
      subsets:
        v1: {{labels: {{version: v1}}}}
        v2: {{labels: {{version: v2}}}}
        v3: {{labels: {{version: v3}}}}
  routes:
    - service: ratings
      rules:
        - backends:
            - {{subset: v1, weight: 90}}
            - {{subset: v3, weight: 0}}
            - {{subset: v2, weight: 10}}
{extra}
"""

# Chi-square critical value at p = 0.001, one degree of freedom.
CHI2_1DOF_0001 = 10.828


def boot(rule_extra: str = "") -> Bootstrap:
    return parse_bootstrap(SPLIT.format(extra=rule_extra))


def resolver(b: Bootstrap, seed: int) -> Resolver:
    return Resolver(b.snapshot, b.listeners, b.node.service, rand=random.Random(seed).random)


def head(user: bytes | None) -> fp.RequestHead:
    extra = b"x-user: " + user + b"\r\n" if user is not None else b""
    raw = b"GET / HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n"
    return fp.parse_request_head(raw)[0]  # type: ignore[index]


def route(r: Resolver, authority: bytes, user: bytes | None = None) -> Route:
    answer = r.resolve("out", head(user), authority, "10.1.1.1", b"/")
    assert isinstance(answer, Route)
    return answer


def test_a_random_split_takes_the_same_draws_and_backends_as_the_table() -> None:
    # ``Ratings`` is not the exact service name: it goes through the table.
    fast, table = resolver(boot(), 3), resolver(boot(), 3)
    picked = [route(fast, b"ratings").subset for _ in range(3000)]
    assert picked == [route(table, b"Ratings").subset for _ in range(3000)]
    counts = Counter(picked)
    assert set(counts) == {"v1", "v2"}  # weight 0 gets nothing
    expected = (2700.0, 300.0)
    chi2 = sum((counts[s] - e) ** 2 / e for s, e in zip(("v1", "v2"), expected, strict=True))
    assert chi2 < CHI2_1DOF_0001


def test_a_keyed_split_is_sticky_and_draws_only_for_requests_without_the_key() -> None:
    b = boot("          hash_on: {header: x-user}")
    fast, table = resolver(b, 5), resolver(b, 5)
    users = [b"user-%d" % (i % 50) if i % 3 else None for i in range(600)]
    picked = [route(fast, b"ratings", u) for u in users]
    assert [p.subset for p in picked] == [route(table, b"Ratings", u).subset for u in users]
    by_user: dict[bytes, set[str]] = {}
    for user, p in zip(users, picked, strict=True):
        if user is not None:
            by_user.setdefault(user, set()).add(p.subset)
    assert all(len(subsets) == 1 for subsets in by_user.values())
    assert {"v1", "v2"} <= {p.subset for p in picked}


def test_split_routes_are_the_routes_the_table_path_shares() -> None:
    r = resolver(boot(), 7)
    fast = {route(r, b"ratings").subset: route(r, b"ratings") for _ in range(200)}
    slow = {route(r, b"RATINGS").subset: route(r, b"RATINGS") for _ in range(200)}
    assert set(fast) == {"v1", "v2"}
    assert all(fast[s] is slow[s] for s in fast)


def test_a_single_backend_rule_of_a_routed_service_is_answered_by_host() -> None:
    b = parse_bootstrap(SPLIT.format(extra="").replace("- {subset: v2, weight: 10}", ""))
    # v1 is the only backend with weight: no draw, no table.
    draws = 0

    def rand() -> float:
        nonlocal draws
        draws += 1
        return 0.5

    r = Resolver(b.snapshot, b.listeners, b.node.service, rand=rand)
    assert {route(r, b"ratings").subset for _ in range(20)} == {"v1"}
    assert route(r, b"ratings") is route(r, b"RATINGS")
    assert draws == 0
