"""`make demo` end to end: two origins, a real sidecar, 2,000 requests, a 90/10 split."""

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

# 2,000 requests at p = 0.1: the standard deviation of v2's share is 0.67 points,
# so 3 points is a 4.5-sigma band: it fails on a wrong split, not on chance.
TOLERANCE_POINTS = 3.0


def test_demo_once_observes_a_90_10_split_and_exits_cleanly() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "meshproxy.demo", "--once", "--port", "0", "--admin-port", "0"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(
        r"split observed: v1 ([0-9.]+)% \((\d+)\), v2 ([0-9.]+)% \((\d+)\); errors (\d+)",
        done.stdout,
    )
    assert found, done.stdout
    v1_pct, v1, v2_pct, v2, errors = found.groups()
    assert int(v1) + int(v2) == 2000
    assert int(errors) == 0
    assert abs(float(v2_pct) - 10.0) <= TOLERANCE_POINTS, done.stdout
    assert abs(float(v1_pct) - 90.0) <= TOLERANCE_POINTS, done.stdout
    assert "curl -H 'Host: ratings' http://127.0.0.1:" in done.stdout
    assert "/config_dump" in done.stdout and "/metrics" in done.stdout
    assert done.stdout.rstrip().endswith("demo: stopped")
