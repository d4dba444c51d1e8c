"""The executor for real clusters: replica counts set through Kubernetes' scale
subresource (``/apis/apps/v1/namespaces/{ns}/{deployments|statefulsets}/{name}/scale``)
with the official ``kubernetes`` client.

On a cluster the kubelet starts and stops the pods and the sidecar injector gives
each its sidecar, so the control plane's part shrinks to "this service should run N
replicas": ``scale`` sends a JSON merge patch of ``spec.replicas`` (what ``kubectl
scale`` does) and answers the Scale the API server returned; ``read`` answers the
current one.  A service maps to a workload of the same name unless told otherwise.

The client is synchronous (urllib3); the async methods run it in a worker thread so
the control plane's loop never blocks on the API server.  API errors become
``ExecutorError`` with the HTTP status and the server's reason.  This room decides
nothing: the counts come from ``control/reconcile.py``'s autoscaler.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from control.decisions import Decision
from control.reconcile import Reconciler

Kind = Literal["deployment", "statefulset"]
MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = 10.0


class ExecutorError(Exception):
    """The API server refused or could not be reached; ``status`` is None for the latter."""

    def __init__(self, message: str, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Scale:
    """A workload's Scale: replicas asked (spec) and running (status)."""

    workload: str
    namespace: str
    desired: int
    current: int
    selector: str
    resource_version: str


def api_client_from(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """In-cluster credentials when running in a pod, else a kubeconfig file."""
    if kubeconfig is None:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            return client.ApiClient()
        except config.ConfigException:
            pass
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=kubeconfig, context=context
    )
    return api


class KubernetesExecutor:
    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        kind: Kind = "deployment",
        workloads: Mapping[str, str] | None = None,
    ) -> None:
        self.apps = client.AppsV1Api(api)
        self.namespace = namespace
        self.kind: Kind = kind
        self.workloads = dict(workloads or {})

    def workload(self, service: str) -> str:
        return self.workloads.get(service, service)

    # -- synchronous: one API call each -------------------------------------------------

    def read_sync(self, service: str) -> Scale:
        name = self.workload(service)
        read = (
            self.apps.read_namespaced_deployment_scale
            if self.kind == "deployment"
            else self.apps.read_namespaced_stateful_set_scale
        )
        try:
            found = read(name, self.namespace, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            raise _error(exc, f"reading the scale of {self.kind} {self.namespace}/{name}") from None
        except HTTPError as exc:
            raise ExecutorError(f"the API server is unreachable: {exc}") from None
        return _scale(found, name, self.namespace)

    def scale_sync(self, service: str, replicas: int) -> Scale:
        if replicas < 0:
            raise ValueError("replicas must not be negative")
        name = self.workload(service)
        patch = (
            self.apps.patch_namespaced_deployment_scale
            if self.kind == "deployment"
            else self.apps.patch_namespaced_stateful_set_scale
        )
        try:
            done = patch(
                name,
                self.namespace,
                {"spec": {"replicas": replicas}},
                field_manager="meshcontrol",
                _content_type=MERGE_PATCH,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as exc:
            raise _error(exc, f"scaling {self.kind} {self.namespace}/{name}") from None
        except HTTPError as exc:
            raise ExecutorError(f"the API server is unreachable: {exc}") from None
        return _scale(done, name, self.namespace)

    # -- for the control plane's loop ---------------------------------------------------

    async def read(self, service: str) -> Scale:
        return await asyncio.to_thread(self.read_sync, service)

    async def scale(self, service: str, replicas: int) -> Scale:
        return await asyncio.to_thread(self.scale_sync, service, replicas)


class KubernetesScaling:
    """The reconcile step on a cluster: for each service with a spec, the autoscaler's
    count (``Reconciler.recommend``, current = the Scale's ``spec.replicas`` as the
    HPA takes it) is written through the scale subresource.  Placement is the
    cluster's; the load must reach the reconciler's autoscalers from elsewhere
    (Prometheus: ``autoscaler.samples_from_prometheus``).  A failing call is recorded
    once until it changes, not every step."""

    def __init__(self, executor: KubernetesExecutor, reconciler: Reconciler) -> None:
        self.executor = executor
        self.reconciler = reconciler
        self._failing: dict[str, str] = {}

    async def step(
        self, now: float, wall: float, floors: Mapping[str, int] | None = None
    ) -> list[Decision]:
        decisions: list[Decision] = []
        for service in sorted(self.reconciler.specs):
            try:
                scale = await self.executor.read(service)
                floor = (floors or {}).get(service)
                desired, reason = self.reconciler.recommend(service, now, scale.desired, floor)
                if desired != scale.desired:
                    await self.executor.scale(service, desired)
                    decisions.append(
                        Decision(wall, "autoscaler", service, "scale",
                                 f"{scale.desired} -> {desired}: {reason}", "kubernetes")
                    )  # fmt: skip
                self._failing.pop(service, None)
            except ExecutorError as exc:
                if self._failing.get(service) != str(exc):
                    self._failing[service] = str(exc)
                    decisions.append(
                        Decision(wall, "kubernetes", service, "error", str(exc), "kubernetes")
                    )
        return decisions


def _scale(found: client.V1Scale, name: str, namespace: str) -> Scale:
    spec, status, meta = found.spec, found.status, found.metadata
    return Scale(
        workload=name,
        namespace=namespace,
        desired=(spec.replicas or 0) if spec is not None else 0,
        current=status.replicas if status is not None else 0,
        selector=(status.selector or "") if status is not None else "",
        resource_version=(meta.resource_version or "") if meta is not None else "",
    )


def _error(exc: ApiException, doing: str) -> ExecutorError:
    # The body of an API error is a Status object; its message says what was wrong.
    reason = str(exc.reason or "")
    message = reason
    try:
        status = json.loads(exc.body or "{}")
        reason = str(status.get("reason", reason))
        message = str(status.get("message", message))
    except (ValueError, AttributeError):
        pass
    return ExecutorError(f"{doing}: {exc.status} {message}", exc.status, reason)
