"""The TLS listener's helpers: addresses, key-file modes, contexts from real certificates."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest

from novacron.pki.ca import CertificateAuthority
from novacron.server.tls import (
    TlsConfigError,
    check_private_file,
    parse_address,
    server_context,
)


def test_addresses() -> None:
    assert parse_address("127.0.0.1:7443") == ("127.0.0.1", 7443)
    assert parse_address("[::1]:7443") == ("::1", 7443)
    for bad in ("7443", "host:", "host:0", "host:99999", ":7443"):
        with pytest.raises(TlsConfigError):
            parse_address(bad)


def test_server_context_is_tls13_mutual(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca")
    cert, key = ca.issue("node1", "node", tmp_path / "n", node=True)
    ctx = server_context(cert, key, ca.dir / "ca.crt", ca.dir / "crl.pem")
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    os.chmod(key, 0o644)
    with pytest.raises(TlsConfigError, match="chmod 600"):
        check_private_file(key)
    with pytest.raises(TlsConfigError, match="cannot read"):
        check_private_file(tmp_path / "missing.key")
    os.chmod(key, 0o600)
    with pytest.raises(TlsConfigError, match="unusable"):
        server_context(cert, key, tmp_path / "nope.crt", None)
