"""From wrk runs to the figures we report: medians, ratios to HAProxy, the table.

Pure: measurements in, numbers and text out.  The ratio of a target is taken
per round (against HAProxy's run in that same round) and then the median of
those ratios is reported, because an absolute figure drifts by 30% between
runs on a shared machine while a side-by-side ratio does not (BENCHMARKS.md).

Each run also records the CPU time the target's processes used, so a target
has a second figure: requests per CPU-second, the throughput it would reach
on a core of its own (every target here is one process, saturated by wrk).
It tells a target that was slow from one that was starved of CPU.  The
goals are judged on requests/s, as BENCHMARKS.md states them; the
per-CPU-second ratio is printed next to each.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.wrk import WrkResult

REFERENCE = "haproxy"


@dataclass(frozen=True, slots=True)
class Sample:
    """One wrk run of one target in one round; ``result`` is None when wrk failed."""

    target: str
    round: int
    result: WrkResult | None
    rss_kib: int = 0
    error: str = ""
    cpu_s: float = 0.0  # CPU time of the target's processes during the run

    @property
    def per_cpu_s(self) -> float | None:
        """Requests served per CPU-second of the target (None: not measured)."""
        if self.result is None or self.cpu_s <= 0.0:
            return None
        return self.result.requests / self.cpu_s


@dataclass(frozen=True, slots=True)
class Row:
    target: str
    runs: int
    rps: float | None
    p50_ms: float | None
    p99_ms: float | None
    ratio: float | None  # median over rounds of rps / HAProxy's rps in the same round
    rss_kib: int  # after the target's last run
    flagged: list[str] = field(default_factory=list)
    per_cpu_s: float | None = None  # median requests per CPU-second


def median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _wall(sample: Sample) -> float | None:
    return sample.result.requests_per_s if sample.result is not None else None


def _per_cpu(sample: Sample) -> float | None:
    return sample.per_cpu_s


def ratios_to_reference(
    samples: list[Sample],
    target: str,
    reference: str = REFERENCE,
    figure: Callable[[Sample], float | None] = _wall,
) -> list[float]:
    """figure(target) / figure(reference) for every round in which both have
    one; the figure is requests/s unless another is given."""
    by_round: dict[tuple[str, int], float] = {}
    for s in samples:
        value = figure(s)
        if value is not None:
            by_round[(s.target, s.round)] = value
    rounds = sorted({s.round for s in samples if s.target == target})
    return [
        by_round[(target, r)] / by_round[(reference, r)]
        for r in rounds
        if (target, r) in by_round and by_round.get((reference, r), 0.0) > 0.0
    ]


def summarize(samples: list[Sample], targets: list[str], reference: str = REFERENCE) -> list[Row]:
    rows = []
    for target in targets:
        mine = [s for s in samples if s.target == target]
        ok = [s.result for s in mine if s.result is not None]
        flagged = [f"round {s.round}: {s.error}" for s in mine if s.result is None]
        flagged += [
            f"round {s.round}: {s.result.non_2xx} non-2xx, {s.result.socket_errors} socket errors"
            for s in mine
            if s.result is not None and s.result.has_errors
        ]
        last = max(mine, key=lambda s: s.round, default=None)
        rows.append(
            Row(
                target=target,
                runs=len(ok),
                rps=median_or_none([r.requests_per_s for r in ok]),
                p50_ms=median_or_none([r.p50_ms for r in ok]),
                p99_ms=median_or_none([r.p99_ms for r in ok]),
                ratio=median_or_none(ratios_to_reference(samples, target, reference)),
                rss_kib=last.rss_kib if last is not None else 0,
                flagged=flagged,
                per_cpu_s=median_or_none([v for v in (s.per_cpu_s for s in mine) if v is not None]),
            )
        )
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: list[Row]) -> str:
    header = ("target", "req/s", "req/CPU-s", "p50 ms", "p99 ms", "x HAProxy", "RSS MiB", "errors")
    lines = [
        (
            row.target,
            _fmt(row.rps, ",.0f"),
            _fmt(row.per_cpu_s, ",.0f"),
            _fmt(row.p50_ms, ".2f"),
            _fmt(row.p99_ms, ".2f"),
            _fmt(row.ratio, ".2f"),
            _fmt(row.rss_kib / 1024 if row.rss_kib else None, ".1f"),
            "FLAGGED" if row.flagged else "none",
        )
        for row in rows
    ]
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    out = []
    for n, cells in enumerate([header, *lines]):
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        out.append("  ".join([first, *rest]))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    for row in rows:
        out += [f"  {row.target}: {flag}" for flag in row.flagged]
    return "\n".join(out)


@dataclass(frozen=True, slots=True)
class Bar:
    """A goal stated as a throughput ratio: ``target`` / ``baseline`` in the
    same round, median over rounds, at least ``at_least``."""

    target: str
    baseline: str
    at_least: float
    what: str


# The goals the issues set for ``make bench``, each a side-by-side ratio.
BARS = (
    Bar("meshproxy", "haproxy", 0.50, "sidecar vs HAProxy on the same core"),
    Bar("meshproxy", "aiohttp", 4.0, "sidecar vs a naive aiohttp proxy"),
    Bar("meshproxy", "meshproxy-nometrics", 0.90, "metrics cost <= 10%"),
    Bar("meshproxy-trace1", "meshproxy", 0.95, "tracing at 1% costs <= 5% more"),
    Bar("meshproxy-split", "meshproxy", 0.90, "a 90/10 split costs <= 10%"),
    Bar("meshproxy-lr3", "meshproxy-rr3", 0.95, "least request costs <= 5% vs round robin"),
    Bar("meshproxy-policy", "meshproxy", 0.80, "policy chain >= 0.8x the default"),
)


@dataclass(frozen=True, slots=True)
class BarResult:
    bar: Bar
    ratio: float | None  # wall clock; None: a side was not measured in any common round
    rounds: list[float]
    cpu_ratio: float | None = None  # per CPU-second; None: CPU time not measured
    cpu_rounds: list[float] = field(default_factory=list)

    @property
    def met(self) -> bool | None:
        return None if self.ratio is None else self.ratio >= self.bar.at_least


def check_bars(samples: list[Sample], bars: tuple[Bar, ...] = BARS) -> list[BarResult]:
    """Every bar whose two sides were both measured."""
    measured = {s.target for s in samples}
    out = []
    for bar in bars:
        if bar.target in measured and bar.baseline in measured:
            rounds = ratios_to_reference(samples, bar.target, bar.baseline)
            cpu = ratios_to_reference(samples, bar.target, bar.baseline, _per_cpu)
            out.append(BarResult(bar, median_or_none(rounds), rounds, median_or_none(cpu), cpu))
    return out


def format_bars(results: list[BarResult]) -> str:
    """One line per bar: the median ratio, the goal, met or not, each round's ratio."""
    if not results:
        return ""
    lines = [
        "goals (target / baseline req/s in the same round, median over rounds;"
        " per CPU-second beside it):"
    ]
    for r in results:
        verdict = {None: "not measured", True: "met", False: "NOT met"}[r.met]
        each = " ".join(f"{x:.2f}" for x in r.rounds)
        cpu_each = " ".join(f"{x:.2f}" for x in r.cpu_rounds)
        lines.append(
            f"  {r.bar.target} / {r.bar.baseline} = {_fmt(r.ratio, '.2f')}"
            f" (goal >= {r.bar.at_least:.2f}: {r.bar.what}) {verdict}; rounds: {each};"
            f" per CPU-s {_fmt(r.cpu_ratio, '.2f')}, rounds: {cpu_each or '-'}"
        )
    return "\n".join(lines)
