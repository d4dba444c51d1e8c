"""The bootstrap's observability section: defaults and refusals."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from meshproxy.config import Bootstrap
from meshproxy.config.observability import Observability


def test_defaults_are_metrics_on_access_log_and_tracing_off() -> None:
    boot = Bootstrap.model_validate({"node": {"id": "a", "service": "a"}})
    obs = boot.observability
    assert obs.metrics.enabled and obs.metrics.flush_interval == 1.0
    assert not obs.access_log.enabled and obs.access_log.path == "-"
    assert not obs.tracing.enabled and obs.tracing.sampling == 0.01


def test_durations_and_formats_parse() -> None:
    obs = Observability.model_validate(
        {
            "metrics": {"flush_interval": "250ms"},
            "tracing": {"exporter": "otlp_grpc", "endpoint": "127.0.0.1:4317",
                        "propagation": ["b3"], "schedule_delay": "2s"},
        }
    )  # fmt: skip
    assert obs.metrics.flush_interval == 0.25
    assert obs.tracing.enabled and obs.tracing.propagation == ("b3",)
    assert obs.tracing.schedule_delay == 2.0


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"tracing": {"exporter": "otlp_http"}}, "endpoint"),
        ({"tracing": {"exporter": "zipkin", "endpoint": "x"}}, "exporter"),
        ({"tracing": {"sampling": 1.5}}, "sampling"),
        ({"tracing": {"propagation": []}}, "propagation"),
        ({"access_log": {"sampling": -0.1}}, "sampling"),
        ({"access_log": {"queue_size": 0}}, "queue_size"),
        ({"access_log": {"colour": True}}, "colour"),
    ],
)
def test_bad_values_are_refused_naming_the_field(section: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Observability.model_validate(section)
    assert field in str(info.value)
