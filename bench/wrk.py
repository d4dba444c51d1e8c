"""wrk as a measuring instrument: the command line, and its report parsed into numbers.

``parse_wrk`` is pure (text in, ``WrkResult`` out) so that it is tested against
captured reports; running wrk is one ``subprocess.run`` in ``run_wrk``.  This
module knows nothing of targets or rounds.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass

# wrk prints times with the unit that keeps the number short (stats.c format_time).
_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_TIME = r"([0-9.]+)(us|ms|s|m|h)"

_RPS = re.compile(r"^Requests/sec:\s+([0-9.]+)\s*$", re.M)
_TOTAL = re.compile(r"^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m|h),", re.M)
_PERCENTILE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+" + _TIME + r"\s*$", re.M)
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.M
)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)", re.M)


class WrkError(Exception):
    """wrk could not run, or printed a report this module cannot read."""


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests_per_s: float
    requests: int
    p50_ms: float
    p99_ms: float
    non_2xx: int = 0  # wrk counts status >= 400 here, despite the label
    socket_errors: int = 0  # connect + read + write + timeout

    @property
    def has_errors(self) -> bool:
        return self.non_2xx > 0 or self.socket_errors > 0

    def as_dict(self) -> dict[str, float | int | bool]:
        return {**asdict(self), "has_errors": self.has_errors}


def _ms(number: str, unit: str) -> float:
    return float(number) * _TIME_UNITS[unit]


def parse_wrk(text: str) -> WrkResult:
    """Read a ``wrk --latency`` report.  The socket-error and non-2xx lines are
    printed only when non-zero, so their absence means zero."""
    rps = _RPS.search(text)
    total = _TOTAL.search(text)
    if rps is None or total is None:
        raise WrkError(f"no 'Requests/sec' or request count in wrk output:\n{text}")
    percentiles = {float(p): _ms(n, u) for p, n, u in _PERCENTILE.findall(text)}
    if 50.0 not in percentiles or 99.0 not in percentiles:
        raise WrkError(f"no latency distribution (run wrk with --latency):\n{text}")
    socket = _SOCKET_ERRORS.search(text)
    non_2xx = _NON_2XX.search(text)
    return WrkResult(
        requests_per_s=float(rps.group(1)),
        requests=int(total.group(1)),
        p50_ms=percentiles[50.0],
        p99_ms=percentiles[99.0],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in socket.groups()) if socket else 0,
    )


def wrk_command(
    url: str,
    *,
    connections: int,
    duration_s: float,
    threads: int = 1,
    headers: dict[str, str] | None = None,
) -> list[str]:
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--latency",
    ]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    return [*cmd, url]


def run_wrk(
    cmd: list[str], duration_s: float, preexec: Callable[[], None] | None = None
) -> WrkResult:
    """Run wrk (``preexec``: e.g. pinning it to the driver's CPU) and parse its report."""
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=duration_s + 30,
            check=False,
            preexec_fn=preexec,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WrkError(f"{cmd[0]} failed: {exc}") from None
    if done.returncode != 0:
        raise WrkError(f"wrk exited with {done.returncode}: {done.stderr.strip()}")
    return parse_wrk(done.stdout)
