"""Per-request counting for the metrics (``ShapeTally``, ``ExchangeTally``,
``ExchangeCounter``), in both fast-path twins."""

from __future__ import annotations

import bisect
import importlib
import random
from types import ModuleType

import pytest

from meshproxy.observe.exchange import Exchange
from tests.twins import compiled_fastpath

DURATIONS = (0.001, 0.01, 0.1)
SIZES = (64.0, 256.0)


def test_a_value_lands_in_the_first_bucket_whose_bound_is_at_least_it(
    fastpath: ModuleType,
) -> None:
    shape = fastpath.ShapeTally(DURATIONS, SIZES)
    for duration in (0.0, 0.001, 0.0011, 0.1, 5.0):
        shape.add_duration(duration)
    assert shape.duration_buckets() == [2, 1, 1, 1]  # le is inclusive; 5.0 is +Inf
    assert shape.duration_sum == pytest.approx(5.1021)
    assert shape.request_buckets() == [0, 0, 0] and shape.response_buckets() == [0, 0, 0]
    shape.add(0.5, 64, 257)
    assert shape.request_buckets() == [1, 0, 0] and shape.response_buckets() == [0, 0, 1]
    assert (shape.request_sum, shape.response_sum) == (64.0, 257.0)
    assert shape.duration_buckets() == [2, 1, 1, 2]


def test_bounds_must_be_ascending_and_few(fastpath: ModuleType) -> None:
    with pytest.raises(ValueError, match="ascending"):
        fastpath.ShapeTally((0.1, 0.01), SIZES)
    with pytest.raises(ValueError, match="at most"):
        fastpath.ShapeTally(tuple(float(i) for i in range(fastpath.MAX_BOUNDS + 1)), SIZES)


def exchange(service: str, status: int, duration: float, size: int) -> Exchange:
    ex = Exchange("out", "outbound", "front")
    ex.destination_service = service
    ex.status = status
    ex.duration = duration
    ex.bytes_in = size
    ex.bytes_out = size * 2
    return ex


def test_the_counter_asks_once_per_label_tuple_and_counts_each_exchange(
    fastpath: ModuleType,
) -> None:
    shape = fastpath.ShapeTally(DURATIONS, SIZES)
    asked: list[tuple[object, ...]] = []
    tallies: dict[tuple[object, ...], object] = {}

    def miss(raw: tuple[object, ...]) -> object:
        asked.append(raw)
        return tallies.setdefault(raw, fastpath.ExchangeTally(shape))

    count = fastpath.ExchangeCounter(miss, 100)
    for _ in range(3):
        count(exchange("a", 200, 0.005, 10))
    count(exchange("a", 503, 0.2, 0))
    assert asked == [
        ("outbound", "front", "a", "-", "-", 200, "-"),
        ("outbound", "front", "a", "-", "-", 503, "-"),
    ]
    assert [t.count for t in tallies.values()] == [3, 1]  # type: ignore[attr-defined]
    assert shape.duration_buckets() == [0, 3, 0, 1] and shape.request_buckets() == [4, 0, 0]
    assert count.size() == 2
    count.clear()
    count(exchange("a", 200, 0.005, 10))
    assert len(asked) == 3 and count.size() == 1
    count.tally_for(("outbound", "front", "a", "-", "-", 200, "-")).add_duration(0.05)
    assert shape.duration_buckets() == [0, 4, 1, 1] and len(asked) == 3


def test_the_table_stays_bounded_and_loses_no_count(fastpath: ModuleType) -> None:
    shape = fastpath.ShapeTally(DURATIONS, SIZES)
    one = fastpath.ExchangeTally(shape)  # every raw tuple maps to one series
    count = fastpath.ExchangeCounter(lambda raw: one, 4)
    for i in range(50):
        count(exchange(f"host-{i}", 200, 0.002, 1))
        assert count.size() <= 4
    assert one.count == 50 and sum(shape.duration_buckets()) == 50


def test_a_miss_that_gives_no_tally_is_a_type_error_in_the_compiled_twin() -> None:
    compiled = compiled_fastpath()
    with pytest.raises(TypeError):
        compiled.ExchangeCounter(lambda raw: None, 4)(exchange("a", 200, 0.1, 1))


def test_both_twins_count_alike() -> None:
    python = importlib.import_module("meshproxy._fastpath_py")
    compiled = compiled_fastpath()
    seeded = random.Random(1)
    durations = tuple(sorted({seeded.uniform(0, 1) for _ in range(14)}))
    sizes = tuple(float(4**i) for i in range(3, 13))
    rng = random.Random(2)
    values = [
        (rng.expovariate(5), rng.randrange(0, 1 << 25), rng.randrange(0, 300)) for _ in range(2000)
    ]
    shapes = []
    for module in (python, compiled):
        shape = module.ShapeTally(durations, sizes)
        for duration, size_in, size_out in values:
            shape.add(duration, size_in, size_out)
        shapes.append(shape)
    for part in ("duration", "request", "response"):
        a, b = (getattr(s, f"{part}_buckets")() for s in shapes)
        assert a == b and sum(a) == len(values)
        assert getattr(shapes[0], f"{part}_sum") == pytest.approx(getattr(shapes[1], f"{part}_sum"))
    expected = [0] * (len(durations) + 1)
    for duration, _, _ in values:
        expected[bisect.bisect_left(durations, duration)] += 1
    assert shapes[0].duration_buckets() == expected
