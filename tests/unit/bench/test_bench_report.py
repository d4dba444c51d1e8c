"""Medians, ratios to HAProxy per round, and the flags on runs with errors."""

import pytest

from bench.report import (
    Bar,
    Sample,
    check_bars,
    format_bars,
    format_table,
    ratios_to_reference,
    summarize,
)
from bench.wrk import WrkResult


def _run(rps: float, p50: float = 1.0, p99: float = 2.0, non_2xx: int = 0) -> WrkResult:
    return WrkResult(requests_per_s=rps, requests=int(rps) * 5, p50_ms=p50, p99_ms=p99,
                     non_2xx=non_2xx)  # fmt: skip


def test_ratio_is_taken_within_each_round_then_the_median() -> None:
    samples = [
        Sample("haproxy", 1, _run(50_000)), Sample("mesh", 1, _run(30_000)),
        Sample("haproxy", 2, _run(40_000)), Sample("mesh", 2, _run(20_000)),
        Sample("haproxy", 3, _run(60_000)), Sample("mesh", 3, _run(15_000)),
    ]  # fmt: skip
    assert ratios_to_reference(samples, "mesh") == pytest.approx([0.6, 0.5, 0.25])
    (row,) = summarize(samples, ["mesh"])
    assert row.ratio == pytest.approx(0.5)
    assert row.rps == 20_000  # median of rps, not rps of the median ratio


def test_rounds_where_either_side_failed_are_left_out_of_the_ratio() -> None:
    samples = [
        Sample("haproxy", 1, _run(50_000)), Sample("mesh", 1, None, error="wrk exited with 1"),
        Sample("haproxy", 2, None, error="timeout"), Sample("mesh", 2, _run(20_000)),
        Sample("haproxy", 3, _run(40_000)), Sample("mesh", 3, _run(30_000)),
    ]  # fmt: skip
    assert ratios_to_reference(samples, "mesh") == pytest.approx([0.75])
    (row,) = summarize(samples, ["mesh"])
    assert row.runs == 2
    assert row.flagged == ["round 1: wrk exited with 1"]


def test_no_reference_means_no_ratio() -> None:
    (row,) = summarize([Sample("nginx", 1, _run(40_000))], ["nginx"])
    assert row.ratio is None
    assert row.rps == 40_000


def test_latency_medians_and_rss_after_the_last_round() -> None:
    samples = [
        Sample("t", 1, _run(1, p50=1.0, p99=9.0), rss_kib=1000),
        Sample("t", 2, _run(1, p50=3.0, p99=5.0), rss_kib=3000),
        Sample("t", 3, _run(1, p50=2.0, p99=7.0), rss_kib=2000),
    ]
    (row,) = summarize(samples, ["t"])
    assert (row.p50_ms, row.p99_ms, row.rss_kib) == (2.0, 7.0, 2000)


def test_run_with_non_2xx_is_flagged_in_the_table() -> None:
    samples = [Sample("haproxy", 1, _run(50_000)), Sample("mesh", 1, _run(10_000, non_2xx=12))]
    rows = summarize(samples, ["haproxy", "mesh"])
    assert rows[1].flagged == ["round 1: 12 non-2xx, 0 socket errors"]
    table = format_table(rows).splitlines()
    assert table[0].split() == ["target", "req/s", "req/CPU-s", "p50", "ms", "p99", "ms", "x",
                                "HAProxy", "RSS", "MiB", "errors"]  # fmt: skip
    assert table[2].split() == ["haproxy", "50,000", "-", "1.00", "2.00", "1.00", "-", "none"]
    assert table[3].split() == ["mesh", "10,000", "-", "1.00", "2.00", "0.20", "-", "FLAGGED"]
    assert table[4].strip() == "mesh: round 1: 12 non-2xx, 0 socket errors"


def test_goals_compare_two_targets_round_by_round() -> None:
    samples = [
        Sample("meshproxy", 1, _run(10_000)), Sample("meshproxy-split", 1, _run(9_500)),
        Sample("meshproxy", 2, _run(8_000)), Sample("meshproxy-split", 2, _run(6_800)),
        Sample("meshproxy", 3, _run(12_000)), Sample("meshproxy-split", 3, _run(11_400)),
    ]  # fmt: skip
    bars = (
        Bar("meshproxy-split", "meshproxy", 0.90, "split"),
        Bar("meshproxy-policy", "meshproxy", 0.80, "policy"),  # not measured: left out
    )
    (result,) = check_bars(samples, bars)
    assert result.rounds == pytest.approx([0.95, 0.85, 0.95])
    assert result.ratio == pytest.approx(0.95) and result.met is True
    text = format_bars([result])
    assert "meshproxy-split / meshproxy = 0.95 (goal >= 0.90: split) met" in text
    assert "rounds: 0.95 0.85 0.95" in text


def test_goals_show_the_per_cpu_second_ratio_beside_the_wall_clock_one() -> None:
    # The split's wall-clock rounds look bad (the machine was busy) while the
    # CPU it used per request stayed close to the default's.
    samples = [
        Sample("meshproxy", 1, _run(10_000), cpu_s=5.0),
        Sample("meshproxy-split", 1, _run(7_000), cpu_s=3.6),
        Sample("meshproxy", 2, _run(10_000), cpu_s=5.0),
        Sample("meshproxy-split", 2, _run(9_000), cpu_s=4.6),
    ]
    (row,) = summarize(samples, ["meshproxy"])
    assert row.per_cpu_s == pytest.approx(10_000)  # 50,000 requests / 5 CPU-s
    (result,) = check_bars(samples, (Bar("meshproxy-split", "meshproxy", 0.90, "split"),))
    assert result.ratio == pytest.approx(0.8) and result.cpu_ratio == pytest.approx(0.975, 1e-3)
    assert result.met is False  # judged on requests/s
    text = format_bars([result])
    assert "= 0.80 (goal >= 0.90: split) NOT met; rounds: 0.70 0.90;" in text
    assert "per CPU-s 0.98, rounds: 0.97 0.98" in text
