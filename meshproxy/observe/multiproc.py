"""prometheus-client's multi-process mode, as the sidecar's workers use it.

With ``--workers N`` each worker keeps its values in mmap files under
``PROMETHEUS_MULTIPROC_DIR`` and one scrape merges them (``metrics``).  Here
are the pieces around that mode: choosing the value store before any metric
exists, dropping a dead worker's live gauges, and hiding what retired config
versions leave behind.  Nothing here runs per request.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

__all__ = ["MULTIPROC_ENV", "HideRetiredConfigs", "mark_worker_dead", "use_value_store"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def mark_worker_dead(pid: int, multiproc_dir: str | None = None) -> None:
    """Drop a dead worker's live gauges (its open connections) from multi-process scrapes."""
    mark_process_dead(pid, multiproc_dir or os.environ.get(MULTIPROC_ENV))  # type: ignore[no-untyped-call]


def use_value_store(*, multiprocess: bool) -> None:
    """Make prometheus-client store values per process (mmap) or in memory, as asked.

    prometheus-client picks its value store from the environment once, when it
    is first imported; the runtime may import it before it sets the variable and
    forks, so the choice is made again here, before any metric is built.
    """
    current: Any = values.ValueClass
    if bool(getattr(current, "_multiprocess", False)) != multiprocess:
        values.ValueClass = (
            values.MultiProcessValue() if multiprocess else values.MutexValue  # type: ignore[no-untyped-call]
        )


class HideRetiredConfigs:
    """Drops the zero samples that retired config versions leave in the mmap files."""

    def __init__(self, inner: MultiProcessCollector) -> None:
        self._inner = inner

    def collect(self) -> Iterator[Metric]:
        for metric in self._inner.collect():  # type: ignore[no-untyped-call]
            if metric.name == "meshproxy_config_version":
                metric.samples = [s for s in metric.samples if s.value != 0]
            yield metric
