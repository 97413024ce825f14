"""NovaCron's CA on real files: modes, refusals, what certificates and the CRL hold."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from novacron.pki.ca import CaError, CertificateAuthority


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_issue_revoke(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca")
    assert mode(tmp_path / "ca") == 0o700 and mode(tmp_path / "ca" / "ca.key") == 0o600
    with pytest.raises(CaError, match="already holds"):
        CertificateAuthority.init(tmp_path / "ca")
    cert_path, key_path = ca.issue("alice", "operator", tmp_path / "out", tenants=("acme", "beta"))
    assert mode(key_path) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == [
        "urn:novacron:role:operator",
        "urn:novacron:tenant:acme",
        "urn:novacron:tenant:beta",
    ]
    assert cert.issuer == ca.cert.subject
    with pytest.raises(CaError, match="exists"):
        ca.issue("alice", "operator", tmp_path / "out")
    node_cert, _ = ca.issue("node1", "node", tmp_path / "out", node=True, addresses=("10.0.0.1",))
    node = x509.load_pem_x509_certificate(node_cert.read_bytes())
    names = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["node1"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.1"]
    revoked = ca.revoke(name="alice")
    assert revoked == [cert.serial_number]
    crl = x509.load_pem_x509_crl((tmp_path / "ca" / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    assert crl.is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]
    with pytest.raises(CaError, match="no live certificate"):
        ca.revoke(name="alice")
    assert [(e.name, e.revoked_at is not None) for e in ca.index()] == [
        ("alice", True),
        ("node1", False),
    ]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"name": "Bad Name", "role": "admin"}, "valid name"),
        ({"name": "x", "role": "root"}, "unknown role"),
        ({"name": "x", "role": "admin", "node": True}, "node certificates"),
        ({"name": "x", "role": "node"}, "node certificates"),
        ({"name": "x", "role": "viewer", "tenants": ("../etc",)}, "valid name"),
        ({"name": "x", "role": "viewer", "days": 0}, "days must be 1 to 36500"),
        (
            {"name": "n", "role": "node", "node": True, "addresses": ("bad host!",)},
            "neither an IP address nor a DNS name",
        ),
        (
            {"name": "n", "role": "node", "node": True, "addresses": ("-lead.example",)},
            "neither an IP address nor a DNS name",
        ),
    ],
)
def test_bad_requests_are_refused(tmp_path: Path, kwargs: dict, needle: str) -> None:  # type: ignore[type-arg]
    ca = CertificateAuthority.init(tmp_path / "ca")
    with pytest.raises(CaError, match=needle):
        ca.issue(out_dir=tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_missing_ca_is_explained(tmp_path: Path) -> None:
    with pytest.raises(CaError, match="ca init"):
        CertificateAuthority(tmp_path)


def test_a_node_certificate_names_the_hosts_peers_dial(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca")
    path, _ = ca.issue(
        "node2",
        "node",
        tmp_path / "out",
        node=True,
        addresses=("node2.dc1.example.", "fd00:99::2", "10.0.0.2"),
    )
    names = (
        x509.load_pem_x509_certificate(path.read_bytes())
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert names.get_values_for_type(x509.DNSName) == ["node2", "node2.dc1.example"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["fd00:99::2", "10.0.0.2"]


def test_a_ca_valid_for_no_days_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CaError, match="days must be"):
        CertificateAuthority.init(tmp_path / "ca", days=0)
    assert not (tmp_path / "ca").exists()
