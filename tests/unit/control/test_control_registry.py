import pytest
from pydantic import ValidationError

from control.registry.local import HealthCheck, Instance, InstanceSpec, LocalRegistry


def _ttl(port: int = 9001, ttl: float = 10.0, service: str = "ratings") -> Instance:
    spec = InstanceSpec(service=service, address="127.0.0.1", port=port, ttl=f"{ttl}s")  # type: ignore[arg-type]
    return Instance(f"{service}-{port}", spec)


def _checked(port: int = 9001, interval: float = 5.0, threshold: int = 2) -> Instance:
    check = HealthCheck.model_validate(
        {"path": "/health", "interval": f"{interval}s", "unhealthy_threshold": threshold}
    )
    spec = InstanceSpec(service="ratings", address="127.0.0.1", port=port, check=check)
    return Instance(f"ratings-{port}", spec)


def test_spec_needs_exactly_one_of_ttl_and_check() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        InstanceSpec(service="a", address="127.0.0.1", port=1)
    with pytest.raises(ValidationError, match="exactly one"):
        InstanceSpec.model_validate(
            {"service": "a", "address": "h", "port": 1, "ttl": "5s", "check": {}}
        )


def test_spec_takes_durations_as_strings() -> None:
    spec = InstanceSpec.model_validate({"service": "a", "address": "h", "port": 1, "ttl": "1500ms"})
    assert spec.ttl == 1.5


def test_ttl_lapse_makes_an_instance_unhealthy_and_a_heartbeat_revives_it() -> None:
    registry = LocalRegistry()
    registry.add(_ttl(ttl=10.0), now=0.0)
    assert registry.expire(now=9.0) == []
    assert registry.heartbeat("ratings-9001", now=9.0) is False
    assert registry.expire(now=19.5) == ["ratings-9001"]
    assert registry.expire(now=30.0) == []  # reported once
    assert registry.healthy_endpoints() == {"ratings": []}
    assert registry.heartbeat("ratings-9001", now=31.0) is True
    assert [e.port for e in registry.healthy_endpoints()["ratings"]] == [9001]
    assert registry.heartbeat("nope", now=31.0) is None


def test_checks_are_due_on_their_interval() -> None:
    registry = LocalRegistry()
    registry.add(_checked(interval=5.0), now=0.0)
    registry.add(_ttl(port=9002), now=0.0)
    assert [i.id for i in registry.due_checks(now=0.0)] == ["ratings-9001"]
    assert registry.due_checks(now=4.9) == []
    assert [i.id for i in registry.due_checks(now=5.0)] == ["ratings-9001"]


def test_failed_checks_flip_health_at_the_threshold_and_one_pass_restores_it() -> None:
    registry = LocalRegistry()
    registry.add(_checked(threshold=2), now=0.0)
    assert registry.check_result("ratings-9001", ok=False, now=1.0) is False
    assert registry.check_result("ratings-9001", ok=False, now=2.0) is True
    assert registry.check_result("ratings-9001", ok=False, now=3.0) is False
    assert registry.healthy_endpoints() == {"ratings": []}
    assert registry.check_result("ratings-9001", ok=True, now=4.0) is True
    assert len(registry.healthy_endpoints()["ratings"]) == 1


def test_endpoints_carry_labels_zone_and_weight_in_instance_id_order() -> None:
    registry = LocalRegistry()
    spec = InstanceSpec(
        service="ratings",
        address="10.0.0.2",
        port=80,
        labels={"version": "v2"},
        zone="a",
        weight=3,
        ttl="5s",  # type: ignore[arg-type]
    )
    registry.add(Instance("ratings-b", spec), now=0.0)
    registry.add(_ttl(port=81), now=0.0)
    endpoints = registry.healthy_endpoints()["ratings"]
    assert [(e.port, e.labels, e.zone, e.weight) for e in endpoints] == [
        (81, {}, None, 1),
        (80, {"version": "v2"}, "a", 3),
    ]
    assert registry.remove("ratings-b") and not registry.remove("ratings-b")
