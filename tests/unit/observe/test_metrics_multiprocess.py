"""ProxyMetrics in multi-process mode: one scrape shows the sum over worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import values
from prometheus_client.parser import text_string_to_metric_families

from meshproxy.observe.metrics import MULTIPROC_ENV, ProxyMetrics, mark_worker_dead

REPO = Path(__file__).parents[3]

# A worker: records argv[1] requests of 2 ms, one 503 of 300 ms, opens one connection.
WORKER = """
import sys
from meshproxy.observe.metrics import ProxyMetrics
m = ProxyMetrics(services=["ratings"])
for _ in range(int(sys.argv[1])):
    m.request_done("outbound", "ratings", 200, 0.002)
m.request_done("outbound", "ratings", 503, 0.3)
m.connection_opened("outbound")
m.close()
"""


@pytest.fixture
def multiproc_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Multi-process mode for this test only; the value store is put back afterwards."""
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    yield tmp_path
    values.close_all_multiprocess_files()  # type: ignore[no-untyped-call]


def run_workers(directory: Path, counts: list[int]) -> list[int]:
    env = {**os.environ, MULTIPROC_ENV: str(directory), "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(n)], env=env, cwd=REPO) for n in counts
    ]
    try:
        for proc in procs:
            assert proc.wait(timeout=60) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [proc.pid for proc in procs]


def samples(m: ProxyMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, _ = m.render()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (name, frozenset(labels.items()))


def shape(service: str, direction: str = "outbound", source: str = "unknown") -> dict[str, str]:
    """Histogram labels of what ``request_done`` records (no subset, unknown source)."""
    return {
        "direction": direction,
        "source_service": source,
        "destination_service": service,
        "destination_subset": "-",
    }


def req(service: str, code: str, direction: str = "outbound") -> dict[str, str]:
    """Request-counter labels of what ``request_done`` records."""
    return {**shape(service, direction), "route": "-", "response_code": code, "response_flags": "-"}


def test_scrape_sums_requests_durations_and_connections_of_all_workers(
    multiproc_dir: Path,
) -> None:
    pids = run_workers(multiproc_dir, [30, 12])
    # Built after prometheus-client was imported without the variable: must switch anyway.
    scraper = ProxyMetrics()
    s = samples(scraper)

    total = "meshproxy_requests_total"
    assert s[key(total, **req("ratings", "200", "outbound"))] == 42
    assert s[key(total, **req("ratings", "503", "outbound"))] == 2
    labels = shape("ratings")
    assert s[key("meshproxy_request_duration_seconds_count", **labels)] == 44
    assert s[key("meshproxy_request_duration_seconds_sum", **labels)] == pytest.approx(0.684)
    bucket = "meshproxy_request_duration_seconds_bucket"
    assert s[key(bucket, le="0.0025", **labels)] == 42
    assert s[key(bucket, le="0.5", **labels)] == 44
    assert s[key("meshproxy_active_connections", listener="outbound")] == 2

    mark_worker_dead(pids[0])
    assert samples(scraper)[key("meshproxy_active_connections", listener="outbound")] == 1


def test_scrape_in_multiprocess_mode_includes_own_unflushed_requests(
    multiproc_dir: Path,
) -> None:
    run_workers(multiproc_dir, [5])
    m = ProxyMetrics(services=["ratings"])
    m.request_done("outbound", "ratings", 200, 0.002)
    s = samples(m)
    assert s[key("meshproxy_requests_total", **req("ratings", "200", "outbound"))] == 6


def test_info_and_latest_config_version_in_multiprocess_mode(multiproc_dir: Path) -> None:
    m = ProxyMetrics()
    m.config_loaded("v1")
    m.config_loaded("v2")
    s = samples(m)
    versions = {
        dict(labels)["version"]: v
        for (n, labels), v in s.items()
        if n == "meshproxy_config_version"
    }
    assert versions == {"v2": 1}
    assert [v for (n, _), v in s.items() if n == "meshproxy_info"] == [1]
    assert list(multiproc_dir.glob("*.db"))


def test_memory_and_cpu_are_summed_over_live_processes(multiproc_dir: Path) -> None:
    pids = run_workers(multiproc_dir, [1, 1])
    m = ProxyMetrics()
    s = samples(m)
    memory = s[key("meshproxy_processes_resident_memory_bytes")]
    assert memory > 0
    assert s[key("meshproxy_processes_cpu_seconds")] > 0
    assert s[key("meshproxy_processes_open_fds")] >= 3
    assert key("process_resident_memory_bytes") not in s
    for pid in pids:
        mark_worker_dead(pid)
    assert 0 < samples(m)[key("meshproxy_processes_resident_memory_bytes")] < memory


def test_stats_sum_the_workers_too(multiproc_dir: Path) -> None:
    run_workers(multiproc_dir, [3, 4])
    stats = ProxyMetrics().stats()
    by_code = {
        row["labels"]["response_code"]: row["value"]  # type: ignore[index]
        for row in stats["meshproxy_requests_total"]
    }
    assert by_code == {"200": 7, "503": 2}
