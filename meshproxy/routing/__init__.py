"""Routing: the compiled route table and what a matched rule decides.

``CompiledRoutes.from_snapshot(snapshot)`` once per snapshot, then
``routes.select(service, host, method, target, headers, client_address)`` per
request -> a ``Decision`` (the rule with its timeout, retry policy, header
edits, rewrites, mirror and faults, and the chosen backend: a service and a
subset).  Sans-IO: no sockets, no clocks, randomness passed in.  Choosing an
endpoint inside the subset belongs to ``meshproxy.upstream``.
"""

from meshproxy.routing.actions import FaultAction, FaultPolicy, HeaderEdit, fault_for
from meshproxy.routing.match import hash_key
from meshproxy.routing.retry import (
    CONNECT_FAILURE,
    IDEMPOTENT_METHODS,
    RESET,
    Outcome,
    RetryBudget,
    RetryPolicy,
    backoff,
    should_retry,
    try_timeout,
)
from meshproxy.routing.split import split_bucket
from meshproxy.routing.table import (
    CompiledRoutes,
    CompiledRule,
    Decision,
    MirrorPolicy,
    Target,
    mirror_for,
)

__all__ = [
    "CONNECT_FAILURE",
    "IDEMPOTENT_METHODS",
    "RESET",
    "CompiledRoutes",
    "CompiledRule",
    "Decision",
    "FaultAction",
    "FaultPolicy",
    "HeaderEdit",
    "MirrorPolicy",
    "Outcome",
    "RetryBudget",
    "RetryPolicy",
    "Target",
    "backoff",
    "fault_for",
    "hash_key",
    "mirror_for",
    "should_retry",
    "split_bucket",
    "try_timeout",
]
