"""The benchmark's configs: the sidecar's validate against the real bootstrap
models, nginx and HAProxy get one worker and keep-alive to the origin."""

import pytest

from bench import configs
from bench.chain import judge_authz, judge_rate_limit, judge_split
from meshproxy.config import parse_bootstrap

PORTS = (9001, 9002)


def test_default_sidecar_config_has_one_endpoint_and_no_route_table() -> None:
    boot = parse_bootstrap(configs.to_yaml(configs.meshproxy_bootstrap(PORTS)), "bench")
    assert [listener.port for listener in boot.listeners] == [0]
    assert boot.admin.port == 0
    (service,) = boot.snapshot.services.values()
    assert [e.port for e in service.endpoints] == [9001]
    assert boot.snapshot.routes == []
    assert boot.snapshot.access == []


def test_policy_config_runs_limit_authz_and_split_on_the_services_own_node() -> None:
    raw = configs.meshproxy_bootstrap(PORTS, configs.PolicyChain())
    boot = parse_bootstrap(configs.to_yaml(raw), "bench")
    assert boot.node.service == configs.SERVICE
    (listener,) = boot.listeners
    assert (listener.name, listener.direction) == ("inbound", "inbound")
    assert listener.local_app is None  # a gateway: routed by the table
    (policy,) = boot.snapshot.policies
    assert policy.service == configs.SERVICE
    assert policy.rate_limits[0].requests_per_second >= 1_000_000  # never reached
    assert set(policy.subsets) == {"v1", "v2"}
    (access,) = boot.snapshot.access
    assert (access.service, access.action) == (configs.SERVICE, "allow")
    (table,) = boot.snapshot.routes
    weights = [(b.subset, b.weight) for b in table.rules[0].backends]
    assert weights == [("v1", 90), ("v2", 10)]
    ports = sorted(e.port for e in boot.snapshot.services[configs.SERVICE].endpoints)
    assert ports == sorted(PORTS[:2])


def test_without_the_split_the_policy_sidecar_fronts_the_origin() -> None:
    raw = configs.meshproxy_bootstrap(PORTS, configs.PolicyChain(split=False))
    (listener,) = parse_bootstrap(configs.to_yaml(raw), "bench").listeners
    assert listener.local_app == f"127.0.0.1:{PORTS[0]}"


def test_policy_parts_can_be_left_out() -> None:
    raw = configs.meshproxy_bootstrap(PORTS, configs.PolicyChain(rate_limit=False, authz=False))
    boot = parse_bootstrap(configs.to_yaml(raw), "bench")
    assert boot.snapshot.policies[0].rate_limits == []
    assert boot.snapshot.access == []


def test_probe_configs_make_the_filters_bite() -> None:
    rate = parse_bootstrap(configs.to_yaml(configs.rate_limit_probe_bootstrap(PORTS)), "rate")
    assert rate.snapshot.policies[0].rate_limits[0].requests_per_second == 1
    deny = parse_bootstrap(configs.to_yaml(configs.authz_probe_bootstrap(PORTS)), "deny")
    assert deny.snapshot.access[0].action == "deny"


def test_nginx_origin_serves_each_port_with_its_subset_and_one_worker() -> None:
    text = configs.nginx_origin_conf("/tmp/p", PORTS)
    assert "worker_processes 1;" in text
    assert "listen 127.0.0.1:9001 " in text and "listen 127.0.0.1:9002 " in text
    assert text.index("9001") < text.index("X-Subset v1") < text.index("9002")
    assert 'return 200 "hello world\\n";' in text
    assert "access_log off;" in text


def test_nginx_proxy_keeps_upstream_connections_alive() -> None:
    text = configs.nginx_proxy_conf("/tmp/p", 8080, 9001)
    assert "worker_processes 1;" in text
    assert "keepalive 32;" in text
    assert "proxy_http_version 1.1;" in text
    assert 'proxy_set_header Connection "";' in text


def test_haproxy_has_one_thread_and_reuses_connections() -> None:
    text = configs.haproxy_conf(8080, 9001)
    assert "nbthread 1" in text
    assert "http-reuse always" in text
    assert "bind 127.0.0.1:8080" in text
    assert "server origin 127.0.0.1:9001" in text


@pytest.mark.parametrize(("v2", "active"), [(40, True), (10, False), (200, False), (0, False)])
def test_split_counts_as_active_only_near_ten_percent(v2: int, active: bool) -> None:
    part = judge_split(["v2"] * v2 + ["v1"] * (400 - v2), [200] * 400)
    assert part.active is active


def test_split_cannot_be_judged_from_error_answers() -> None:
    assert judge_split(["v1"] * 10, [200] * 9 + [502]).active is None


def test_rate_limit_and_authz_are_judged_by_their_statuses() -> None:
    assert judge_rate_limit([200, 429, 429, 429, 429]).active is True
    assert judge_rate_limit([200] * 5).active is False
    assert judge_authz([403]).active is True
    assert judge_authz([200]).active is False


def test_observability_variants_load_and_switch_what_they_name() -> None:
    off = parse_bootstrap(
        configs.to_yaml(configs.meshproxy_bootstrap(PORTS, observability="no_metrics")), "b"
    )
    assert off.observability.metrics.enabled is False
    traced = parse_bootstrap(
        configs.to_yaml(configs.meshproxy_bootstrap(PORTS, observability="trace_1pct")), "b"
    )
    assert traced.observability.tracing.exporter == "otlp_http"
    assert traced.observability.tracing.sampling == 0.01
    assert traced.observability.tracing.endpoint == f"http://127.0.0.1:{PORTS[0]}/v1/traces"
    default = parse_bootstrap(configs.to_yaml(configs.meshproxy_bootstrap(PORTS)), "b")
    assert default.observability.metrics.enabled is True
    assert default.observability.tracing.exporter == "none"
