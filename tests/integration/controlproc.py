"""``meshcontrol run`` as a real process for integration tests: started on a
loopback port the OS picks, with its own data directory, stopped by SIGTERM
(then killed) when the block ends."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).parents[2]
_LISTENING = re.compile(r"listening address=\S+ port=(\d+)")


@contextmanager
def meshcontrol(
    data_dir: Path,
    env: Mapping[str, str],
    log: Path | None = None,
    require_clean_exit: bool = False,
    port: int = 0,
) -> Iterator[str]:
    """Yield the control plane's base URL.  ``env`` adds ``MESHCONTROL_*``
    settings (the data directory is set here); ``require_clean_exit`` asserts
    that SIGTERM ends it with status 0; ``port`` 0 lets the OS choose (give the
    port of an earlier run to start it again where its clients look)."""
    log = log or data_dir / f"meshcontrol-{time.monotonic_ns()}.log"
    full_env = {**os.environ, "MESHCONTROL_DATA_DIR": str(data_dir), **env}
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "control", "run", "--port", str(port)],
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        port = None
        deadline = time.monotonic() + 20
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            found = _LISTENING.search(log.read_text(errors="replace"))
            port = int(found.group(1)) if found else None
            time.sleep(0.05)
        assert port is not None, log.read_text(errors="replace")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    if require_clean_exit:
        assert proc.returncode == 0, log.read_text(errors="replace")
