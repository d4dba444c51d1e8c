"""`make demo` end to end: origins, a real control plane and real sidecars in
dynamic mode, a 90/10 canary moved to 50/50, a rollout promoted step by step and
a broken one rolled back; and the static mode (--static)."""

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
ROLLOUT_STEP = re.compile(r"rollout step (\d+): (v\d) at (\d+)% \((\w+)\) - reason: (.*)")


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
    assert "/v1/rollouts/ratings" in out and "/v1/decisions" in out
    assert out.rstrip().endswith("demo: stopped")
    _assert_rollouts(out)


def _assert_rollouts(out: str) -> None:
    """v2 climbs to promotion by growing weights; v3 is rolled back for its errors."""
    assert out.index("split observed", out.index("step 2:")) < out.index("PUT /v1/rollouts")
    steps = ROLLOUT_STEP.findall(out)
    good = [(int(w), phase, why) for _, canary, w, phase, why in steps if canary == "v2"]
    bad = [(int(w), phase, why) for _, canary, w, phase, why in steps if canary == "v3"]
    weights = [w for w, phase, _ in good if phase == "progressing"]
    # a held step may repeat a weight, but the weight never goes down
    assert weights == sorted(weights) and len(set(weights)) >= 2, out
    assert weights[0] == 20 and weights[-1] == 80, out
    assert good[-1][:2] == (100, "promoted"), out
    assert "promoted" in good[-1][2]
    assert all(phase == "progressing" for _, phase, _ in good[:-1]), out
    assert bad[0][:2] == (20, "progressing"), out
    assert bad[-1][:2] == (0, "rolled_back"), out
    assert bad[-1][2].startswith("rolled back: "), out
    assert "error budget spent" in bad[-1][2] or "success rate" in bad[-1][2], out
    # the v2 rollout never lost a request; v3's errors are its own 500s
    between = out[out.index("PUT /v1/rollouts/ratings v1 -> v2") : out.index("100% v2 -> version")]
    assert "status" not in between, out
    assert "status 500 from v3" in out
    assert "demo: rollout of v2 promoted; rollout of v3 rolled_back" in out


def test_static_demo_observes_a_90_10_split_and_exits_cleanly() -> None:
    done = _demo("--static")
    out = done.stdout
    [(v1_pct, v2_pct)] = _splits(out)
    assert abs(v2_pct - 10.0) <= TOLERANCE_90_10, out
    assert abs(v1_pct - 90.0) <= TOLERANCE_90_10, out
    assert "control plane" not in out and "rollout" not in out
    assert "curl -H 'Host: ratings' http://127.0.0.1:" in out
    assert "/config_dump" in out and "/metrics" in out
    assert out.rstrip().endswith("demo: stopped")
