"""The mesh CA: SVIDs it signs, files it keeps, and root rotation with overlap."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from control.ca import CADirectory, CAError, CASettings, CertificateAuthority, new_signer
from meshproxy.security.spiffe import SpiffeId
from meshproxy.security.x509 import CertInfo, build_csr, generate_key, load_certificates

NOW = 1_800_000_000.0
DAY = 86400.0
ME = SpiffeId.of("cluster.local", "shop", "reviews")


def _ca(intermediate: bool = False, **settings: object) -> CertificateAuthority:
    s = CASettings(intermediate=intermediate, **settings)
    return CertificateAuthority("cluster.local", new_signer("cluster.local", NOW, s), s.cert_ttl)


def _csr(identity: SpiffeId = ME) -> bytes:
    return build_csr(generate_key(), identity)


def test_an_svid_names_the_identity_lives_24h_and_is_a_tls_leaf() -> None:
    issued = _ca().sign(_csr(), ME, NOW)
    leaf = load_certificates(issued.chain)[0]
    assert issued.info.identity == ME
    assert issued.info.not_after == NOW + DAY
    assert issued.info.not_before <= NOW
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert format(leaf.serial_number, "x") == issued.info.serial


def test_with_an_intermediate_the_chain_carries_it_and_the_bundle_only_the_root() -> None:
    ca = _ca(intermediate=True)
    chain = load_certificates(ca.sign(_csr(), ME, NOW).chain)
    roots = load_certificates(ca.trust_bundle(NOW))
    assert len(chain) == 2 and len(roots) == 1
    assert chain[0].issuer == chain[1].subject
    assert chain[1].issuer == roots[0].subject


def test_a_csr_asking_for_another_identity_is_refused() -> None:
    other = SpiffeId.of("cluster.local", "shop", "payments")
    with pytest.raises(CAError, match="payments"):
        _ca().sign(_csr(other), ME, NOW)


def test_an_identity_of_another_trust_domain_or_a_garbled_csr_is_refused() -> None:
    ca = _ca()
    with pytest.raises(CAError, match="trust domain"):
        ca.sign(_csr(), SpiffeId.of("evil.example", "shop", "reviews"), NOW)
    with pytest.raises(CAError, match="CSR"):
        ca.sign(
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            ME,
            NOW,
        )


def test_an_svid_never_outlives_its_issuer() -> None:
    ca = _ca(intermediate=True, intermediate_ttl="2h")
    issued = ca.sign(_csr(), ME, NOW)
    assert issued.info.not_after == pytest.approx(NOW + 7200.0)


def test_root_rotation_trusts_both_roots_during_the_overlap_then_only_the_new() -> None:
    settings = CASettings()
    ca = _ca()
    old_root = ca.signer.root_cert
    ca.begin_rotation(NOW, publish_delay=3600.0, settings=settings)
    assert ca.trusted_roots(NOW) == [old_root, ca.pending.signer.root_cert]  # type: ignore[union-attr]
    # Before activation the old root still signs: peers may not know the new one yet.
    assert ca.sign(_csr(), ME, NOW + 10).chain
    assert ca.signer.root_cert == old_root
    assert ca.advance(NOW + 3600.0)
    new_root = ca.signer.root_cert
    assert new_root != old_root
    assert ca.trusted_roots(NOW + 3601) == [new_root, old_root]
    leaf = load_certificates(ca.sign(_csr(), ME, NOW + 3601).chain)[0]
    assert leaf.issuer == new_root.subject
    # The old root leaves once every certificate it signed has expired.
    assert not ca.advance(NOW + 3600.0 + DAY - 1)
    assert ca.advance(NOW + 3600.0 + DAY)
    assert ca.trusted_roots(NOW + 3600.0 + DAY) == [new_root]


def test_a_second_rotation_waits_for_the_first() -> None:
    ca = _ca()
    ca.begin_rotation(NOW, 60.0, CASettings())
    with pytest.raises(CAError, match="in progress"):
        ca.begin_rotation(NOW, 60.0, CASettings())


def _modes(path: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.iterdir()}


def test_a_generated_ca_is_kept_0600_and_reloaded_the_same(tmp_path: Path) -> None:
    settings = CASettings(intermediate=True)
    directory = CADirectory(tmp_path / "ca", settings)
    first = directory.load_or_create(NOW)
    assert stat.S_IMODE((tmp_path / "ca").stat().st_mode) == 0o700
    modes = _modes(tmp_path / "ca")
    assert {"root.pem", "root.key", "intermediate.pem", "intermediate.key"} <= set(modes)
    assert set(modes.values()) == {0o600}
    again = CADirectory(tmp_path / "ca", settings).load_or_create(NOW + 5)
    assert again.trust_bundle(NOW) == first.trust_bundle(NOW)
    assert again.signer.issuer.cert == first.signer.issuer.cert


def test_a_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    CADirectory(tmp_path, CASettings()).load_or_create(NOW)
    (tmp_path / "root.key").chmod(0o644)
    with pytest.raises(CAError, match="chmod 600"):
        CADirectory(tmp_path, CASettings()).load_or_create(NOW)


def test_a_rotation_in_progress_survives_a_restart(tmp_path: Path) -> None:
    settings = CASettings()
    directory = CADirectory(tmp_path, settings)
    ca = directory.load_or_create(NOW)
    ca.begin_rotation(NOW, 3600.0, settings)
    directory.save(ca)
    restarted = CADirectory(tmp_path, settings).load_or_create(NOW + 1)
    assert restarted.trust_bundle(NOW + 1) == ca.trust_bundle(NOW + 1)
    assert restarted.advance(NOW + 3600.0)
    CADirectory(tmp_path, settings).save(restarted)
    after = CADirectory(tmp_path, settings).load_or_create(NOW + 3601)
    assert after.signer.root_cert == restarted.signer.root_cert
    assert len(after.trusted_roots(NOW + 3601)) == 2
    assert not (tmp_path / "next-root.pem").exists()


def test_operator_given_root_files_sign_and_are_never_rewritten(tmp_path: Path) -> None:
    made = CADirectory(tmp_path / "made", CASettings(intermediate=True)).load_or_create(NOW)
    given = CASettings(
        root_cert_file=tmp_path / "made" / "root.pem",
        intermediate_cert_file=tmp_path / "made" / "intermediate.pem",
        intermediate_key_file=tmp_path / "made" / "intermediate.key",
    )
    ca = CADirectory(tmp_path / "ca", given).load_or_create(NOW)
    assert not (tmp_path / "ca" / "root.key").exists()
    chain = ca.sign(_csr(), ME, NOW).chain
    assert CertInfo.of_chain(chain).identity == ME
    assert ca.trust_bundle(NOW) == made.trust_bundle(NOW)
    with pytest.raises(CAError, match="operator"):
        ca.begin_rotation(NOW, 0.0, given)


def test_durations_in_settings_read_as_text() -> None:
    assert CASettings(cert_ttl="1h").cert_ttl == 3600.0
    assert CASettings().cert_ttl == DAY
