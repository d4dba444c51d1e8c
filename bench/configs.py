"""Config files of the benchmark's processes, rendered as text from ports and paths.

Pure functions only: no files written, no processes started (``targets`` does
that).  Every target is set up as BENCHMARKS.md asks: one worker or thread,
keep-alive to the origin, no access log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

ORIGIN_BODY = "hello world\n"  # 12 bytes: small enough that the proxy is the bottleneck
SERVICE = "origin"  # the service name the meshproxy targets route by (Host header)


def nginx_origin_conf(prefix: str, ports: tuple[int, ...]) -> str:
    """nginx answering ``hello world`` on each port; the ``X-Subset`` header (v1,
    v2, ...) tells which port served, so a split can be observed."""
    servers = "\n".join(
        f"""    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        keepalive_requests 1000000;
        location / {{
            add_header X-Subset v{i} always;
            return 200 "{ORIGIN_BODY.strip()}\\n";
        }}
    }}"""
        for i, port in enumerate(ports, start=1)
    )
    return _nginx_main(prefix, "    default_type text/plain;\n" + servers)


def nginx_proxy_conf(prefix: str, listen_port: int, origin_port: int) -> str:
    http = f"""    upstream origin {{
        server 127.0.0.1:{origin_port};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{listen_port} reuseport backlog=4096;
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
        }}
    }}"""
    return _nginx_main(prefix, http)


def _nginx_main(prefix: str, http_body: str) -> str:
    # Temp paths inside the prefix: the packaged defaults under /var/lib/nginx
    # are not writable by every user who runs the benchmark.
    return f"""worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{http_body}
}}
"""


def haproxy_conf(listen_port: int, origin_port: int) -> str:
    return f"""global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
    option http-keep-alive
    http-reuse always

frontend bench
    bind 127.0.0.1:{listen_port}
    default_backend origin

backend origin
    server origin 127.0.0.1:{origin_port}
"""


@dataclass(frozen=True, slots=True)
class PolicyChain:
    """The parts of the policy-chain target (BENCHMARKS.md): a rate limit that
    is never reached, an allow rule that admits every GET and a 90/10 weighted
    split.  A service's policies are enforced on an inbound listener of its
    own node (server side, as Istio does), so that is where this target takes
    the load; with ``split`` that listener is a gateway (no local app: it
    routes by the route table), so that all three parts run on every request."""

    rate_limit: bool = True
    authz: bool = True
    split: bool = True


OBSERVABILITY_KINDS = ("default", "no_metrics", "trace_1pct")


def meshproxy_bootstrap(
    origin_ports: tuple[int, ...],
    chain: PolicyChain | None = None,
    observability: str = "default",
) -> dict[str, Any]:
    """Without ``chain``: a sidecar with one outbound listener on an OS-chosen
    port, the default config, one endpoint and no route table.  With it:
    ``policy_bootstrap`` in front of the first origin port.

    ``observability``: ``default`` (metrics on, access log and tracing off),
    ``no_metrics`` (metrics off: the cost of metrics is the difference), or
    ``trace_1pct`` (default plus OTLP/HTTP tracing at 1% sampling, exported to
    the origin, which answers any POST with 200)."""
    if chain is not None:
        return policy_bootstrap(origin_ports, chain)
    if observability not in OBSERVABILITY_KINDS:
        raise ValueError(f"unknown observability kind {observability!r}")
    service: dict[str, Any] = {"endpoints": [_endpoint(origin_ports[0], None)]}
    snapshot: dict[str, Any] = {"services": {SERVICE: service}}
    boot: dict[str, Any] = {
        "node": {"id": "bench-1", "service": "bench-client"},
        "admin": {"address": "127.0.0.1", "port": 0},
        "listeners": [
            {"name": "outbound", "direction": "outbound", "address": "127.0.0.1", "port": 0}
        ],
        "snapshot": snapshot,
    }
    if observability == "no_metrics":
        boot["observability"] = {"metrics": {"enabled": False}}
    elif observability == "trace_1pct":
        endpoint = f"http://127.0.0.1:{origin_ports[0]}/v1/traces"
        boot["observability"] = {
            "tracing": {"exporter": "otlp_http", "endpoint": endpoint, "sampling": 0.01}
        }
    return boot


ROUTING_KINDS = ("split", "round_robin", "least_request")


def routing_bootstrap(origin_ports: tuple[int, ...], kind: str) -> dict[str, Any]:
    """The default config plus one routing feature and nothing else: ``split``
    (v1/v2 on the first two origin ports, 90/10), or the named load balancer
    over three endpoints (the first three origin ports)."""
    if kind not in ROUTING_KINDS:
        raise ValueError(f"unknown routing kind {kind!r}")
    boot = meshproxy_bootstrap(origin_ports)
    snapshot = boot["snapshot"]
    if kind == "split":
        v1, v2 = origin_ports[0], origin_ports[1]
        snapshot["services"][SERVICE] = {"endpoints": [_endpoint(v1, "v1"), _endpoint(v2, "v2")]}
        snapshot["routes"] = [
            {
                "service": SERVICE,
                "rules": [
                    {"backends": [{"subset": "v1", "weight": 90}, {"subset": "v2", "weight": 10}]}
                ],
            }
        ]
        snapshot["policies"] = [
            {
                "service": SERVICE,
                "subsets": {
                    "v1": {"labels": {"version": "v1"}},
                    "v2": {"labels": {"version": "v2"}},
                },
            }
        ]
        return boot
    snapshot["services"][SERVICE] = {
        "endpoints": [_endpoint(port, None) for port in origin_ports[:3]]
    }
    snapshot["policies"] = [{"service": SERVICE, "load_balancer": {"policy": kind}}]
    return boot


def policy_bootstrap(origin_ports: tuple[int, ...], chain: PolicyChain) -> dict[str, Any]:
    """The origin's own node: one inbound listener (named ``inbound``) with the
    service policy and access rule of ``chain``; in front of the first origin
    port, or with ``chain.split`` a gateway routing 90/10 over the first two
    (subsets v1 and v2)."""
    policy = _policy(chain)
    snapshot: dict[str, Any] = {"policies": [policy]}
    if chain.authz:
        snapshot["access"] = [
            {"service": SERVICE, "action": "allow", "rules": [{"to": {"methods": ["GET"]}}]}
        ]
    listener: dict[str, Any] = {
        "name": "inbound",
        "direction": "inbound",
        "address": "127.0.0.1",
        "port": 0,
    }
    if chain.split:
        v1, v2 = origin_ports[0], origin_ports[1]
        snapshot["services"] = {SERVICE: {"endpoints": [_endpoint(v1, "v1"), _endpoint(v2, "v2")]}}
        snapshot["routes"] = [
            {
                "service": SERVICE,
                "rules": [
                    {"backends": [{"subset": "v1", "weight": 90}, {"subset": "v2", "weight": 10}]}
                ],
            }
        ]
        policy["subsets"] = {
            "v1": {"labels": {"version": "v1"}},
            "v2": {"labels": {"version": "v2"}},
        }
    else:
        listener["local_app"] = f"127.0.0.1:{origin_ports[0]}"
    return {
        "node": {"id": "bench-policy", "service": SERVICE},
        "admin": {"address": "127.0.0.1", "port": 0},
        "listeners": [listener],
        "snapshot": snapshot,
    }


def _endpoint(port: int, version: str | None) -> dict[str, Any]:
    endpoint: dict[str, Any] = {"address": "127.0.0.1", "port": port}
    if version is not None:
        endpoint["labels"] = {"version": version}
    return endpoint


def _policy(chain: PolicyChain) -> dict[str, Any]:
    policy: dict[str, Any] = {"service": SERVICE}
    if chain.rate_limit:
        # Far above what one core can serve: the filter runs, the limit never bites.
        policy["rate_limits"] = [
            {"key": "client_address", "requests_per_second": 10_000_000, "burst": 10_000_000}
        ]
    return policy


def rate_limit_probe_bootstrap(origin_ports: tuple[int, ...]) -> dict[str, Any]:
    """The policy config with a limit of one request per second: a sidecar that
    enforces rate limits answers 429 to the second of a quick burst."""
    boot = meshproxy_bootstrap(origin_ports, PolicyChain(rate_limit=True, authz=False, split=False))
    boot["snapshot"]["policies"][0]["rate_limits"] = [
        {"key": "client_address", "requests_per_second": 1, "burst": 1}
    ]
    return boot


def authz_probe_bootstrap(origin_ports: tuple[int, ...]) -> dict[str, Any]:
    """The policy config with every GET denied: a sidecar that enforces access
    policies answers 403."""
    boot = meshproxy_bootstrap(origin_ports, PolicyChain(rate_limit=False, authz=True, split=False))
    boot["snapshot"]["access"] = [
        {"service": SERVICE, "action": "deny", "rules": [{"to": {"methods": ["GET"]}}]}
    ]
    return boot


def to_yaml(bootstrap: dict[str, Any]) -> str:
    return yaml.safe_dump(bootstrap, sort_keys=False)


def inbound_bootstrap(origin_port: int, tls_files: dict[str, str] | None = None) -> dict[str, Any]:
    """The second hop: the origin's own sidecar, one inbound listener in front
    of it; with ``tls_files`` (cert_file, key_file, bundle_file) STRICT mTLS."""
    boot: dict[str, Any] = {
        "node": {"id": "bench-2", "service": SERVICE},
        "admin": {"address": "127.0.0.1", "port": 0},
        "listeners": [
            {
                "name": "inbound",
                "direction": "inbound",
                "address": "127.0.0.1",
                "port": 0,
                "local_app": f"127.0.0.1:{origin_port}",
            }
        ],
    }
    if tls_files is not None:
        boot["security"] = {"mode": "strict", **tls_files}
    return boot


def outbound_hop_bootstrap(
    inbound_port: int, tls_files: dict[str, str] | None = None
) -> dict[str, Any]:
    """The first hop: the default config, its one endpoint the second hop's
    inbound listener (with ``tls_files``, over mTLS)."""
    boot = meshproxy_bootstrap((inbound_port,))
    if tls_files is not None:
        boot["security"] = {"mode": "strict", **tls_files}
    return boot
