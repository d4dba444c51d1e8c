"""Alerts as operator actions: what an Alertmanager webhook (payload version 4) asks
the control plane to do.

An alert acts only when its labels say so (others are acknowledged and ignored):

* ``meshproxy_action: rollback, service: X`` — while firing, roll back X's rollout.
* ``meshproxy_action: scale, service: X, min_replicas: N`` — while firing, X's
  autoscaler keeps at least N replicas (a *floor*, e.g. ahead of a known peak or
  while a dependency is degraded); when the alert resolves, the floor goes.
  Several firing alerts on one service: the highest floor holds.  The floor
  raises ``AutoscalerConfig.min_replicas`` (``with_floor``), never above
  ``max_replicas``.

Plain data and pure functions, no I/O: the API module applies the actions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from control.autoscaler import AutoscalerConfig

ACTION_LABEL = "meshproxy_action"
MAX_FLOOR = 10_000


class _Lenient(BaseModel):
    # Alertmanager adds fields across versions; we read the ones we need, under
    # its own (camelCase) names.
    model_config = ConfigDict(extra="ignore")


class WebhookAlert(_Lenient):
    status: Literal["firing", "resolved"]
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    startsAt: str = ""
    endsAt: str = ""
    fingerprint: str = ""


class WebhookPayload(_Lenient):
    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupKey: str = ""
    alerts: list[WebhookAlert] = Field(max_length=10_000)


@dataclass(frozen=True, slots=True)
class AlertAction:
    kind: Literal["rollback", "floor", "unfloor", "ignore"]
    service: str
    key: str  # the alert's identity (fingerprint, else its labels)
    reason: str
    min_replicas: int = 0


def _key(alert: WebhookAlert) -> str:
    if alert.fingerprint:
        return alert.fingerprint
    return ",".join(f"{k}={v}" for k, v in sorted(alert.labels.items()))


def _describe(alert: WebhookAlert) -> str:
    name = alert.labels.get("alertname", "unnamed")
    summary = alert.annotations.get("summary") or alert.annotations.get("description")
    return f"alert {name} {alert.status}" + (f": {summary}" if summary else "")


def actions_from(payload: WebhookPayload) -> list[AlertAction]:
    """One action per alert that carries ``meshproxy_action``, in payload order."""
    actions: list[AlertAction] = []
    for alert in payload.alerts:
        wanted = alert.labels.get(ACTION_LABEL)
        if wanted is None:
            continue
        service = alert.labels.get("service", "")
        key, why = _key(alert), _describe(alert)
        if not service:
            actions.append(AlertAction("ignore", "", key, f"{why}: no service label"))
        elif wanted == "rollback":
            if alert.status == "firing":
                actions.append(AlertAction("rollback", service, key, why))
        elif wanted == "scale":
            if alert.status == "resolved":
                actions.append(AlertAction("unfloor", service, key, why))
                continue
            text = alert.labels.get("min_replicas", "")
            if not text.isdigit() or int(text) > MAX_FLOOR:
                reason = f"{why}: min_replicas {text!r} is not 0-{MAX_FLOOR}"
                actions.append(AlertAction("ignore", service, key, reason))
            else:
                actions.append(AlertAction("floor", service, key, why, int(text)))
        else:
            actions.append(AlertAction("ignore", service, key, f"{why}: unknown action {wanted!r}"))
    return actions


class ScaleFloors:
    """Replica floors per service, one per firing ``scale`` alert."""

    def __init__(self) -> None:
        self._floors: dict[str, dict[str, int]] = {}

    def apply(self, action: AlertAction) -> bool:
        """Take a floor/unfloor action; True when the service's floor changed."""
        before = self.floor(action.service)
        if action.kind == "floor":
            self._floors.setdefault(action.service, {})[action.key] = action.min_replicas
        elif action.kind == "unfloor":
            held = self._floors.get(action.service, {})
            held.pop(action.key, None)
            if not held:
                self._floors.pop(action.service, None)
        return self.floor(action.service) != before

    def floor(self, service: str) -> int | None:
        held = self._floors.get(service)
        return max(held.values()) if held else None

    def all(self) -> dict[str, int]:
        return {s: max(h.values()) for s, h in sorted(self._floors.items())}


def with_floor(config: AutoscalerConfig, floor: int | None) -> AutoscalerConfig:
    """``config`` with min_replicas raised to ``floor`` (capped at max_replicas)."""
    if floor is None or floor <= config.min_replicas:
        return config
    return dataclasses.replace(config, min_replicas=min(floor, config.max_replicas))
