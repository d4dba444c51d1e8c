"""Header edits, prefix rewrites, fault and mirror draws."""

from __future__ import annotations

from collections import Counter

import pytest

from meshproxy.config.routes import Fault, HeaderOps
from meshproxy.routing import CompiledRoutes, FaultPolicy, fault_for, mirror_for
from meshproxy.routing.actions import NO_FAULT, HeaderEdit, replace_prefix
from tests.unit.routing.snapshots import snapshot


def edit(**spec: object) -> HeaderEdit:
    found = HeaderEdit.of(HeaderOps.model_validate(spec))
    assert found is not None
    return found


def test_empty_header_ops_compile_to_nothing() -> None:
    assert HeaderEdit.of(HeaderOps()) is None


def test_header_edit_removes_then_sets_then_adds_keeping_other_headers() -> None:
    e = edit(set={"X-Env": "prod"}, add={"x-trace": "on"}, remove=["X-Debug"])
    headers = [
        (b"Accept", b"*/*"),
        (b"x-debug", b"1"),
        (b"X-ENV", b"dev"),
        (b"x-env", b"test"),
        (b"x-trace", b"before"),
    ]
    assert e.apply(headers) == [
        (b"Accept", b"*/*"),
        (b"x-trace", b"before"),
        (b"X-Env", b"prod"),
        (b"x-trace", b"on"),
    ]
    assert headers[1] == (b"x-debug", b"1")  # the input is left alone


@pytest.mark.parametrize(
    ("target", "matched", "replacement", "expected"),
    [
        (b"/api/users?id=1", b"/api", b"/", b"/users?id=1"),
        (b"/api/users", b"/api/", b"/v2/", b"/v2/users"),
        (b"/api/users", b"/api", b"/v2", b"/v2/users"),
        (b"/api", b"/api", b"/", b"/"),
        (b"/api", b"/api", b"/v2", b"/v2"),
        (b"/other", b"/api", b"/v2", b"/other"),
        (b"/api/users", b"/", b"/v2", b"/v2/api/users"),
        (b"/api/users", b"/", b"/", b"/api/users"),
    ],
)
def test_replace_prefix(target: bytes, matched: bytes, replacement: bytes, expected: bytes) -> None:
    assert replace_prefix(target, matched, replacement) == expected


def test_fault_draws_delay_and_abort_apart() -> None:
    policy = FaultPolicy(
        Fault.model_validate(
            {"delay": {"fixed": "2s", "percent": 10}, "abort": {"status": 503, "percent": 50}}
        )
    )
    assert fault_for(policy, 0.05, 0.9) == (2.0, None)
    assert fault_for(policy, 0.5, 0.2) == (0.0, 503)
    assert fault_for(policy, 0.0, 0.0) == (2.0, 503)
    assert fault_for(policy, 0.99, 0.99) is NO_FAULT
    assert fault_for(None, 0.0, 0.0) is NO_FAULT


def test_fault_percentages_hold_over_evenly_spread_draws() -> None:
    policy = FaultPolicy(Fault.model_validate({"abort": {"status": 429, "percent": 12.5}}))
    draws = [i / 1000 for i in range(1000)]
    assert Counter(fault_for(policy, r, r).abort for r in draws) == {429: 125, None: 875}


def test_mirror_picks_its_target_for_its_share_of_requests() -> None:
    routes = CompiledRoutes.from_snapshot(
        snapshot(
            [
                {
                    "service": "ratings",
                    "rules": [
                        {"backends": [{"subset": "v1"}], "mirror": {"subset": "v2", "percent": 30}}
                    ],
                }
            ]
        )
    )
    decision = routes.select("ratings", None, b"GET", b"/", [], "")
    assert decision is not None
    mirror = decision.rule.mirror
    targets = [mirror_for(mirror, i / 100) for i in range(100)]
    assert sum(t is not None for t in targets) == 30
    first = targets[0]
    assert first is not None and (first.service, first.subset) == ("ratings", "v2")
    assert [e.port for e in first.endpoints] == [9002]
    assert mirror_for(None, 0.0) is None
