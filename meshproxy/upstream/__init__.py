"""Upstream resilience: choose an endpoint within a service or subset, and
keep it honest with health checks, outlier detection and circuit breakers.

Everything here is sans-IO: callers pass ``now`` (and, where randomness is
needed, a ``rand`` callable); the proxy's I/O layer runs the health probes,
opens connections and reports outcomes.  Typical use per request::

    cluster = upstreams.cluster(service, subset)
    overflow = cluster.breakers.try_request()     # 503 overflow.reason if not None
    endpoint = cluster.pick(hash_key, now)         # None: 503 no healthy upstream
    cluster.request_started(endpoint)
    ...
    cluster.on_result(endpoint, status_or_failure, now)
    cluster.request_finished(endpoint); cluster.breakers.release_request()
"""

from meshproxy.upstream.balancers import (
    Balancer,
    LeastRequest,
    RandomPick,
    RingHash,
    RoundRobin,
    make_balancer,
)
from meshproxy.upstream.breakers import ClusterBreakers, EndpointBreaker, Overflow
from meshproxy.upstream.cluster import Cluster, UpstreamService
from meshproxy.upstream.endpoint import EndpointState, Failure, Outcome
from meshproxy.upstream.health import HealthChecker, Probe
from meshproxy.upstream.outlier import OutlierDetector
from meshproxy.upstream.upstreams import Upstreams

__all__ = [
    "Balancer",
    "Cluster",
    "ClusterBreakers",
    "EndpointBreaker",
    "EndpointState",
    "Failure",
    "HealthChecker",
    "LeastRequest",
    "Outcome",
    "OutlierDetector",
    "Overflow",
    "Probe",
    "RandomPick",
    "RingHash",
    "RoundRobin",
    "UpstreamService",
    "Upstreams",
    "make_balancer",
]
