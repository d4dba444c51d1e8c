"""The Dockerfile's invariants, read from the file (no Docker engine needed):
two stages, the extension compiled in the builder, a non-root runtime."""

import json
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[3]


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = text.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), " ".join(rest.split())))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in _instructions((ROOT / "Dockerfile").read_text()):
        if keyword == "FROM":
            stages.append([])
        stages[-1].append((keyword, rest))
    return stages


def _args(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [rest for kw, rest in stage if kw == keyword]


def test_builder_and_final_stages_are_python_slim() -> None:
    builder, final = _stages()
    assert _args(builder, "FROM") == ["python:3.11-slim AS builder"]
    assert _args(final, "FROM") == ["python:3.11-slim"]


def test_builder_compiles_the_extension_into_the_wheel_and_checks_it() -> None:
    builder, _ = _stages()
    runs = " ".join(_args(builder, "RUN"))
    assert "build-essential" in runs
    assert "pip wheel" in runs
    assert "meshproxy/_fastpath" in runs and ".so" in runs
    assert "MESHPROXY_NO_EXTENSIONS" not in (ROOT / "Dockerfile").read_text()


def test_host_build_products_stay_out_of_the_build_context() -> None:
    # Otherwise a .so built on the host could ship instead of the builder's.
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "**/*.so" in ignored
    assert "meshproxy/_fastpath.c" in ignored
    assert ".venv" in ignored


def test_final_stage_installs_the_wheel_without_a_compiler() -> None:
    _, final = _stages()
    runs = " ".join(_args(final, "RUN"))
    assert "--no-index" in runs and "--find-links" in runs
    assert "build-essential" not in runs
    assert "IMPLEMENTATION == 'cython'" in runs
    assert any("--from=builder" in copy for copy in _args(final, "COPY"))


def test_runtime_user_is_uid_10001_and_nothing_runs_as_root_after_it() -> None:
    _, final = _stages()
    users = _args(final, "USER")
    assert users and users[-1].split(":")[0] == "10001"
    assert "--uid 10001" in " ".join(_args(final, "RUN"))
    last_user = max(i for i, (kw, _) in enumerate(final) if kw == "USER")
    assert all(kw != "RUN" for kw, _ in final[last_user:])


def test_entrypoint_is_the_meshproxy_script_with_run_as_the_default_command() -> None:
    _, final = _stages()
    assert [json.loads(a) for a in _args(final, "ENTRYPOINT")] == [["meshproxy"]]
    assert [json.loads(a) for a in _args(final, "CMD")] == [
        ["run", "--config", "/etc/meshproxy/config.yaml"]
    ]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "meshproxy" in scripts


def test_default_ports_are_exposed() -> None:
    _, final = _stages()
    assert sorted(" ".join(_args(final, "EXPOSE")).split()) == ["15000", "15001", "15006"]


def test_healthcheck_asks_ready_with_python_not_curl() -> None:
    _, final = _stages()
    (check,) = _args(final, "HEALTHCHECK")
    command = json.loads(check.split(" CMD ", 1)[1])
    assert command[:2] == ["python", "-c"]
    assert "http://127.0.0.1:15000/ready" in command[2]
    assert "curl" not in check
