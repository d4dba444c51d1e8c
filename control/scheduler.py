"""Placement of instances onto nodes: the public face of `control.scheduling`.

Filters and scores in the manner of the Kubernetes scheduler, sans-IO: the scheduler
decides and records why; node agents (or Kubernetes) execute. See
`control/scheduling/placement.py` for how a decision is made.
"""

from control.scheduling.model import (
    HOSTNAME_LABEL,
    ZONE_LABEL,
    Decision,
    FitStrategy,
    NodeSpec,
    PodSpec,
    Rejection,
    SchedulerProfile,
    SchedulingError,
    SpreadConstraint,
    Taint,
    TaintEffect,
    Toleration,
    TolerationOperator,
    WhenUnsatisfiable,
    parse_cpu,
    parse_memory,
)
from control.scheduling.placement import NodeUsage, Scheduler

__all__ = [
    "HOSTNAME_LABEL",
    "ZONE_LABEL",
    "Decision",
    "FitStrategy",
    "NodeSpec",
    "NodeUsage",
    "PodSpec",
    "Rejection",
    "Scheduler",
    "SchedulerProfile",
    "SchedulingError",
    "SpreadConstraint",
    "Taint",
    "TaintEffect",
    "Toleration",
    "TolerationOperator",
    "WhenUnsatisfiable",
    "parse_cpu",
    "parse_memory",
]
