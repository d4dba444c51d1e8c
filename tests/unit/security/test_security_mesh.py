"""What the data path reads of mesh TLS: which services get mTLS and which
identity they must present, the node's inbound mode, and refusal counts
published as metrics."""

from __future__ import annotations

from collections import Counter

from meshproxy.config import parse_bootstrap
from meshproxy.config.snapshot import Snapshot
from meshproxy.observe.metrics import ProxyMetrics
from meshproxy.security.mesh import MeshTLS
from meshproxy.security.spiffe import SpiffeId
from tests.unit.security.pki import PKI

BOOT = parse_bootstrap(
    """
node: {id: r1, service: reviews}
security: {mode: permissive, bootstrap_token: t, ca_url: "http://127.0.0.1:1"}
snapshot:
  services:
    ratings: {endpoints: [{address: 127.0.0.1, port: 1}]}
    legacy: {endpoints: [{address: 127.0.0.1, port: 2}]}
    reviews: {endpoints: [{address: 127.0.0.1, port: 3}]}
  policies:
    - {service: legacy, tls: {mode: disable}}
    - {service: reviews, tls: {mode: strict}}
"""
)


def _mesh() -> MeshTLS:
    pki = PKI()
    return MeshTLS(BOOT.security, pki.identity("reviews"), pki.contexts("reviews"), BOOT.snapshot)


def test_services_get_mtls_unless_their_policy_disables_it() -> None:
    mesh = _mesh()
    assert mesh.expected == {
        "ratings": SpiffeId.of("cluster.local", "default", "ratings"),
        "reviews": SpiffeId.of("cluster.local", "default", "reviews"),
    }


def test_the_inbound_mode_is_the_own_services_policy_else_the_mesh_wide_one() -> None:
    mesh = _mesh()
    assert mesh.inbound_mode() == "strict"
    mesh.update(Snapshot.model_validate({"services": {"ratings": {"endpoints": []}}}))
    assert mesh.inbound_mode() == "permissive"
    assert set(mesh.expected) == {"ratings"}


def test_a_new_snapshot_turns_tls_off_and_on_per_service() -> None:
    mesh = _mesh()
    mesh.update(
        Snapshot.model_validate(
            {
                "services": {name: {"endpoints": []} for name in ("ratings", "legacy")},
                "policies": [
                    {"service": "ratings", "tls": {"mode": "disable"}},
                    {"service": "legacy", "tls": {"mode": "strict"}},
                ],
            }
        )
    )
    assert set(mesh.expected) == {"legacy"}


def test_refusal_counts_are_published_as_deltas_at_each_flush() -> None:
    metrics = ProxyMetrics()
    counts: Counter[tuple[str, str]] = Counter()
    metrics.watch_tls_refusals(counts)
    counts[("inbound", "unknown_ca")] += 2
    metrics.flush()
    counts[("inbound", "unknown_ca")] += 1
    counts[("outbound", "wrong_spiffe_id")] += 1
    metrics.flush()
    metrics.flush()
    samples = {
        (s["labels"]["direction"], s["labels"]["reason"]): s["value"]
        for s in metrics.stats()["meshproxy_tls_refusals_total"]
    }
    assert samples == {("inbound", "unknown_ca"): 3.0, ("outbound", "wrong_spiffe_id"): 1.0}
