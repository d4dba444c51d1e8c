"""The in-process hot-path harness: each config's requests reach an upstream
and every response leaves in one write, counted once by the metrics (when
they are on)."""

from __future__ import annotations

import asyncio

import pytest

from bench.hotpath import KINDS, Harness, timed


@pytest.mark.parametrize("kind", KINDS)
async def test_each_request_is_answered_in_one_write_and_counted(kind: str) -> None:
    harness = Harness(kind, asyncio.get_running_loop())
    harness.check(50)
    harness.metrics.flush()
    counted = harness.metrics.stats().get("meshproxy_requests_total", [])
    if kind == "nometrics":  # the config that prices the metrics counts nothing
        assert sum(s["value"] for s in counted) == 0  # type: ignore[misc]
    else:
        assert sum(s["value"] for s in counted) == 50  # type: ignore[misc]
        assert {s["labels"]["response_code"] for s in counted} == {"200"}  # type: ignore[index]
    assert sum(wire.writes for wire in harness.upstream_writes) == 50


async def test_the_split_reaches_both_subsets() -> None:
    harness = Harness("split", asyncio.get_running_loop())
    harness.requests(400)
    used = [wire.writes for wire in harness.upstream_writes]
    assert used[0] > used[1] > 0 and used[2] == 0


async def test_timed_gives_a_positive_figure_per_request() -> None:
    harness = Harness("default", asyncio.get_running_loop())
    assert timed(harness.requests, 10, 2) > 0
