"""Which parts of the policy chain the sidecar under test actually enforces.

The policy target's config asks for a rate limit, an allow rule and a 90/10
split on an inbound (gateway) listener of the service's own node, where a
service's policies are enforced; a sidecar that does not apply one of them
would still be measured, and the table would lie.  So each part is checked by its effect before the
load starts, through the same kind of listener: a short-lived sidecar whose
config makes it bite (429 at one request per second, 403 for a deny-all rule).
``probe_split`` checks a 90/10 split by the share of answers from the v2
origin port.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import configs
from bench.procs import ProcessError
from bench.targets import Run, get, start_meshproxy

SPLIT_PROBE_REQUESTS = 400
# 400 requests at p=0.1: sd 1.5 points, so 4-18% is a split and 50% is not.
SPLIT_V2_RANGE = (0.04, 0.18)


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    active: bool | None  # None: could not tell
    evidence: str

    def describe(self) -> str:
        state = {True: "active", False: "NOT active", None: "unknown"}[self.active]
        return f"{self.name} {state} ({self.evidence})"


def judge_split(subsets: list[str], statuses: list[int]) -> Part:
    if not subsets:
        return Part("split 90/10", None, "no answers")
    bad = sum(1 for s in statuses if not 200 <= s < 300)
    if bad:
        return Part("split 90/10", None, f"{bad} of {len(statuses)} answers not 2xx")
    share = subsets.count("v2") / len(subsets)
    low, high = SPLIT_V2_RANGE
    return Part("split 90/10", low <= share <= high, f"v2 served {share:.1%} of {len(subsets)}")


def judge_rate_limit(statuses: list[int]) -> Part:
    limited = statuses.count(429)
    return Part(
        "rate limit",
        limited > 0,
        f"{limited} of {len(statuses)} requests got 429 with a limit of 1/s",
    )


def judge_authz(statuses: list[int]) -> Part:
    return Part("authz", statuses == [403], f"a GET under a deny rule got {statuses}")


def probe_split(outbound_port: int) -> Part:
    try:
        answers = get(outbound_port, count=SPLIT_PROBE_REQUESTS)
    except OSError as exc:
        return Part("split 90/10", None, f"probe failed: {exc}")
    return judge_split([sub for _, sub in answers], [status for status, _ in answers])


def probe_chain(run: Run, port: int) -> list[Part]:
    """Probe two throw-away sidecars configured like the policy target (which
    runs on ``port``) for the rate limit and the access rule, and the target
    itself for its 90/10 split."""
    return [
        _probe_sidecar(run, "rate limit", configs.rate_limit_probe_bootstrap, 5, judge_rate_limit),
        _probe_sidecar(run, "authz", configs.authz_probe_bootstrap, 1, judge_authz),
        probe_split(port),
    ]


def _probe_sidecar(
    run: Run,
    label: str,
    bootstrap: Callable[[tuple[int, ...]], dict[str, Any]],
    count: int,
    judge: Callable[[list[int]], Part],
) -> Part:
    try:
        target, _ = start_meshproxy(
            run, "probe-" + label.replace(" ", "-"), bootstrap(run.origin_ports), listener="inbound"
        )
    except ProcessError as exc:
        return Part(label, None, f"probe sidecar did not start: {exc}")
    try:
        return judge([status for status, _ in get(target.port, count=count)])
    except OSError as exc:
        return Part(label, None, f"probe failed: {exc}")
    finally:
        run.group.stop_pid(target.pid)
