"""The Grafana dashboards are importable as they are and name only metrics we export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from meshproxy.observe.metrics import MULTIPROC_ENV, ProxyMetrics

GRAFANA = Path(__file__).parents[3] / "config" / "grafana"
BOARDS = sorted(GRAFANA.glob("*.json"))
# Series that come from Prometheus itself or the process collector, not ProxyMetrics' families.
EXTERNAL = {"up", "process_resident_memory_bytes", "process_cpu_seconds_total"}


def test_the_three_dashboards_are_there() -> None:
    assert [p.stem for p in BOARDS] == ["mesh-overview", "service", "sidecar"]


@pytest.mark.parametrize("path", BOARDS, ids=lambda p: p.stem)
def test_dashboard_is_importable_grafana_json(path: Path) -> None:
    board = json.loads(path.read_text())
    assert board["schemaVersion"] >= 36
    assert board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"] and target["refId"]
            used = set(re.findall(r"\$(\w+)", target["expr"]))
            assert used <= {*variables, "__rate_interval"}, (panel["title"], used)


def test_every_metric_a_panel_reads_is_exported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    exported = {
        sample_name
        for family in ProxyMetrics().registry.collect()
        for sample_name in (
            family.name,
            f"{family.name}_total",
            f"{family.name}_bucket",
            f"{family.name}_count",
        )
    }
    read = set()
    for path in BOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                read |= set(re.findall(r"\b((?:meshproxy|process)_\w+|up)\b", target["expr"]))
    assert read - EXTERNAL - {"meshproxy_processes_resident_memory_bytes",
                              "meshproxy_processes_cpu_seconds"} <= exported  # fmt: skip
