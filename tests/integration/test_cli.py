"""``meshproxy check | version | run`` as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.proxyproc import basic_config, write_config

pytestmark = pytest.mark.integration


def meshproxy(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshproxy", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_check_accepts_a_valid_config(tmp_path: Path) -> None:
    path = write_config(tmp_path, basic_config({"web": [8080]}))
    done = meshproxy("check", "--config", str(path))
    assert done.returncode == 0
    assert "ok" in done.stdout


def test_check_names_file_line_and_field_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("node: {id: a, service: b}\nlisteners:\n  - {name: x, port: 99999}\n")
    done = meshproxy("check", "--config", str(path))
    assert done.returncode == 2
    assert f"{path}:3: listeners.0.port" in done.stderr


def test_config_comes_from_the_environment_when_no_flag_is_given(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("node: {id: a}\n")
    done = meshproxy("check", env={"MESHPROXY_CONFIG": str(path)})
    assert done.returncode == 2
    assert "node.service" in done.stderr


def test_run_refuses_a_bad_config_before_binding(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("listeners: 3\n")
    done = meshproxy("run", "--config", str(path))
    assert done.returncode == 2
    assert "listeners" in done.stderr


def test_invalid_worker_count_is_refused() -> None:
    done = meshproxy("run", "--config", "x.yaml", env={"MESHPROXY_WORKERS": "0"})
    assert done.returncode == 2
    assert "workers" in done.stderr


def test_version_names_the_fast_path() -> None:
    done = meshproxy("version")
    assert done.returncode == 0
    assert done.stdout.startswith("meshproxy 0.")
    assert "fastpath=" in done.stdout
