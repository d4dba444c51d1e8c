"""The Kubernetes executor through the real ``kubernetes`` client, against a fake API
server on 127.0.0.1 that replays recorded response shapes (tests/fixtures/k8s/, not
from a live cluster: see the README there) and records what the client sent."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from kubernetes import client

from control.executors.kubernetes import ExecutorError, KubernetesExecutor, KubernetesScaling
from control.nodes import NodeBook, ServiceSpec
from control.reconcile import Reconciler

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "k8s"
BASE = "/apis/apps/v1/namespaces/mesh"


@dataclass
class Sent:
    method: str
    path: str
    content_type: str
    body: object


@dataclass
class FakeApiServer:
    """(method, path) -> (status, fixture file); anything else is the 404 Status."""

    routes: dict[tuple[str, str], tuple[int, str]]
    sent: list[Sent] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    fake = FakeApiServer(routes={})

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            fake.sent.append(
                Sent(self.command, self.path, self.headers.get("Content-Type", ""), body)
            )
            status, name = fake.routes.get(
                (self.command, self.path.split("?")[0]), (404, "not-found.json")
            )
            payload = (FIXTURES / name).read_bytes()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_PATCH = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def executor(fake: FakeApiServer, **kw: object) -> KubernetesExecutor:
    configuration = client.Configuration(host=fake.url)
    return KubernetesExecutor(client.ApiClient(configuration), "mesh", **kw)  # type: ignore[arg-type]


def test_fixtures_are_labelled_as_recorded_shapes() -> None:
    readme = (FIXTURES / "README.md").read_text()
    assert "Recorded response shape, not from a live cluster" in readme


def test_read_answers_desired_and_running_replicas(api: FakeApiServer) -> None:
    api.routes[("GET", f"{BASE}/deployments/ratings/scale")] = (200, "deployment-scale.json")
    scale = executor(api).read_sync("ratings")
    assert (scale.desired, scale.current) == (2, 2)
    assert scale.selector == "app=ratings,version=v1"
    assert scale.resource_version == "48213"
    assert [(s.method, s.path.split("?")[0]) for s in api.sent] == [
        ("GET", f"{BASE}/deployments/ratings/scale")
    ]


def test_scale_sends_a_merge_patch_of_spec_replicas(api: FakeApiServer) -> None:
    path = f"{BASE}/deployments/ratings/scale"
    api.routes[("PATCH", path)] = (200, "deployment-scale-patched.json")
    scale = executor(api).scale_sync("ratings", 5)
    assert (scale.desired, scale.current) == (5, 2)
    (sent,) = api.sent
    assert (sent.method, sent.path.split("?")[0]) == ("PATCH", path)
    assert sent.content_type == "application/merge-patch+json"
    assert sent.body == {"spec": {"replicas": 5}}
    assert "fieldManager=meshcontrol" in sent.path


def test_statefulsets_and_mapped_workload_names(api: FakeApiServer) -> None:
    api.routes[("GET", f"{BASE}/statefulsets/db/scale")] = (200, "statefulset-scale.json")
    ex = executor(api, kind="statefulset", workloads={"postgres": "db"})
    scale = ex.read_sync("postgres")
    assert (scale.workload, scale.desired) == ("db", 3)


def test_missing_workload_is_an_executor_error_with_the_servers_reason(
    api: FakeApiServer,
) -> None:
    with pytest.raises(ExecutorError) as caught:
        executor(api).read_sync("nope")
    assert caught.value.status == 404
    assert caught.value.reason == "NotFound"
    assert 'deployments.apps "nope" not found' in str(caught.value)


def test_forbidden_patch_says_which_permission_is_missing(api: FakeApiServer) -> None:
    api.routes[("PATCH", f"{BASE}/deployments/ratings/scale")] = (403, "forbidden.json")
    with pytest.raises(ExecutorError, match='cannot patch resource "deployments/scale"') as caught:
        executor(api).scale_sync("ratings", 3)
    assert caught.value.status == 403


async def test_async_scale_runs_off_the_event_loop(api: FakeApiServer) -> None:
    api.routes[("PATCH", f"{BASE}/deployments/ratings/scale")] = (
        200,
        "deployment-scale-patched.json",
    )
    scale = await executor(api).scale("ratings", 5)
    assert scale.desired == 5


def test_unreachable_api_server_is_an_executor_error() -> None:
    configuration = client.Configuration(host="http://127.0.0.1:9")
    configuration.retries = 0
    ex = KubernetesExecutor(client.ApiClient(configuration), "mesh")
    with pytest.raises(ExecutorError, match="unreachable") as caught:
        ex.read_sync("ratings")
    assert caught.value.status is None


def test_negative_replicas_are_refused_before_any_call(api: FakeApiServer) -> None:
    with pytest.raises(ValueError, match="negative"):
        executor(api).scale_sync("ratings", -1)
    assert api.sent == []


def _reconciler(max_replicas: int = 10) -> Reconciler:
    rec = Reconciler(NodeBook())
    spec = ServiceSpec.model_validate(
        {
            "command": ["unused on a cluster"],
            "min_replicas": 1,
            "max_replicas": max_replicas,
            "autoscaling": {"target": 5, "stable_window": "6s"},
        }
    )
    rec.set_spec("ratings", spec)
    return rec


async def test_cluster_step_writes_the_autoscalers_count_and_records_it(
    api: FakeApiServer,
) -> None:
    path = f"{BASE}/deployments/ratings/scale"
    api.routes[("GET", path)] = (200, "deployment-scale.json")  # spec.replicas 2
    api.routes[("PATCH", path)] = (200, "deployment-scale-patched.json")
    rec = _reconciler()
    for second in range(3):  # 25 in flight over the pods: 5 pods at target 5
        rec.autoscalers["ratings"].observe(float(second), "pod-a", 25.0)
    made = await KubernetesScaling(executor(api), rec).step(2.5, 1000.0)
    assert [(d.source, d.action, d.actor) for d in made] == [("autoscaler", "scale", "kubernetes")]
    assert made[0].reason.startswith("2 -> 5")
    assert api.sent[-1].body == {"spec": {"replicas": 5}}


async def test_cluster_step_leaves_a_matching_count_alone(api: FakeApiServer) -> None:
    path = f"{BASE}/deployments/ratings/scale"
    api.routes[("GET", path)] = (200, "deployment-scale.json")
    rec = _reconciler()
    for second in range(3):  # 10 in flight: 2 pods, as many as run
        rec.autoscalers["ratings"].observe(float(second), "pod-a", 10.0)
    assert await KubernetesScaling(executor(api), rec).step(2.5, 1000.0) == []
    assert [s.method for s in api.sent] == ["GET"]


async def test_cluster_step_records_a_refusal_once(api: FakeApiServer) -> None:
    path = f"{BASE}/deployments/ratings/scale"
    api.routes[("GET", path)] = (200, "deployment-scale.json")
    api.routes[("PATCH", path)] = (403, "forbidden.json")
    rec = _reconciler()
    scaling = KubernetesScaling(executor(api), rec)
    for second in range(3):
        rec.autoscalers["ratings"].observe(float(second), "pod-a", 25.0)
    first = await scaling.step(2.5, 1000.0)
    again = await scaling.step(3.0, 1000.5)
    assert [(d.source, d.action) for d in first] == [("kubernetes", "error")]
    assert "403" in first[0].reason and "cannot patch" in first[0].reason
    assert again == []
