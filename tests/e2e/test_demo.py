"""`make demo` end to end: origins, a real control plane and real sidecars in
dynamic mode, a 90/10 canary moved to 50/50; and the static mode (--static)."""

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

SPLIT = re.compile(
    r"split observed: v1 ([0-9.]+)% \((\d+)\), v2 ([0-9.]+)% \((\d+)\); errors (\d+)"
)
# 2,000 requests per step.  At p = 0.1 the standard deviation of v2's share is
# 0.67 points, at p = 0.5 it is 1.12: 3 and 5 points are 4.5-sigma bands, so
# they fail on a wrong split, not on chance.
TOLERANCE_90_10 = 3.0
TOLERANCE_50_50 = 5.0


def _demo(*extra: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshproxy.demo",
            "--once",
            "--port",
            "0",
            "--admin-port",
            "0",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _splits(stdout: str) -> list[tuple[float, float]]:
    shares = []
    for v1_pct, v1, v2_pct, v2, errors in SPLIT.findall(stdout):
        assert int(v1) + int(v2) == 2000, stdout
        assert int(errors) == 0, stdout
        shares.append((float(v1_pct), float(v2_pct)))
    return shares


def test_demo_applies_a_90_10_canary_through_the_api_then_moves_it_to_50_50() -> None:
    done = _demo()
    out = done.stdout
    assert "dynamic mode" in out and "control plane http://127.0.0.1:" in out
    steps = re.findall(
        r"step (\d): PUT /v1/routes/ratings (\d+)% v1, (\d+)% v2 -> version (\d+)", out
    )
    assert [(s, w1, w2) for s, w1, w2, _ in steps] == [("1", "90", "10"), ("2", "50", "50")]
    assert int(steps[1][3]) > int(steps[0][3])
    first, second = _splits(out)
    assert abs(first[1] - 10.0) <= TOLERANCE_90_10, out
    assert abs(second[1] - 50.0) <= TOLERANCE_50_50, out
    # the split printed after each step follows that step's line
    assert out.index("step 1:") < out.index("split observed") < out.index("step 2:")
    assert "/v1/proxies" in out and "/config_dump" in out
    assert out.rstrip().endswith("demo: stopped")


def test_static_demo_observes_a_90_10_split_and_exits_cleanly() -> None:
    done = _demo("--static")
    out = done.stdout
    [(v1_pct, v2_pct)] = _splits(out)
    assert abs(v2_pct - 10.0) <= TOLERANCE_90_10, out
    assert abs(v1_pct - 90.0) <= TOLERANCE_90_10, out
    assert "control plane" not in out
    assert "curl -H 'Host: ratings' http://127.0.0.1:" in out
    assert "/config_dump" in out and "/metrics" in out
    assert out.rstrip().endswith("demo: stopped")
