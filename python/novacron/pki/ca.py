"""A small certificate authority for a NovaCron cluster, on the ``cryptography`` package.

Layout of a CA directory (mode 0700): ``ca.key`` (0600), ``ca.crt``, ``crl.pem`` (the
revocation list daemons load; re-signed on every revocation), ``index.json`` (every
certificate issued: serial, name, roles, tenants, node, expiry, revocation time).
Issued keys are written 0600 with ``O_EXCL`` (never over an existing file) and are never
printed or logged. Keys are ECDSA P-256; certificates are X.509 v3 with the holder's
roles and tenants as SAN URIs (see :mod:`novacron.pki.names`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from novacron.pki.names import ROLES, check_principal, san_uris

KEY_MODE = 0o600


class CaError(Exception):
    """A CA operation that cannot be done; the message says why."""


@dataclass
class Issued:
    serial: int
    name: str
    roles: list[str]
    tenants: list[str]
    node: bool
    not_after: str
    revoked_at: str | None = None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def write_private(path: Path, data: bytes) -> None:
    """Creates ``path`` 0600, refusing to overwrite (a key is never replaced silently)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_MODE)
    except FileExistsError:
        raise CaError(f"{path} exists; remove it first if you mean to replace it") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _check_days(days: int) -> None:
    if not 1 <= days <= 36500:
        raise CaError(f"days must be 1 to 36500, not {days}")


def _check_dns_name(address: str) -> str:
    """``address`` if it is a host name a peer can dial (RFC 1123 labels), without the
    root's trailing dot."""
    name = address[:-1] if address.endswith(".") else address
    if len(name) > 253 or not all(DNS_LABEL.fullmatch(label) for label in name.split(".")):
        raise CaError(f"address {address!r} is neither an IP address nor a DNS name")
    return name


class CertificateAuthority:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        try:
            self.cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
            key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
        except FileNotFoundError:
            raise CaError(
                f"no CA in {directory} (run: novacron ca init --dir {directory})"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CaError("ca.key is not an ECDSA key")
        self.key = key

    # -- creation ---------------------------------------------------------------------

    @classmethod
    def init(
        cls, directory: Path, name: str = "NovaCron CA", days: int = 3650
    ) -> CertificateAuthority:
        if (directory / "ca.key").exists():
            raise CaError(f"{directory} already holds a CA")
        _check_days(days)
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        write_private(directory / "ca.key", _key_pem(key))
        (directory / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / "index.json").write_text("[]\n")
        ca = cls(directory)
        ca.write_crl()
        return ca

    # -- index ------------------------------------------------------------------------

    def index(self) -> list[Issued]:
        path = self.dir / "index.json"
        if not path.exists():
            return []
        return [Issued(**entry) for entry in json.loads(path.read_text())]

    def _save(self, entries: list[Issued]) -> None:
        tmp = self.dir / "index.json.tmp"
        tmp.write_text(json.dumps([asdict(e) for e in entries], indent=1) + "\n")
        os.replace(tmp, self.dir / "index.json")

    # -- issuing ----------------------------------------------------------------------

    def issue(
        self,
        name: str,
        role: str,
        out_dir: Path,
        tenants: tuple[str, ...] = (),
        node: bool = False,
        addresses: tuple[str, ...] = (),
        days: int = 365,
        not_before: dt.datetime | None = None,
    ) -> tuple[Path, Path]:
        """Writes ``<name>.crt`` and ``<name>.key`` (0600) into ``out_dir``."""
        try:
            check_principal(name)
        except ValueError as exc:
            raise CaError(str(exc)) from None
        _check_days(days)
        if role not in ROLES:
            raise CaError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        if node != (role == "node"):
            raise CaError("node certificates (--node) have role node, and only they do")
        try:
            uris = san_uris([role], tenants)
        except ValueError as exc:
            raise CaError(str(exc)) from None
        alt: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        if node:
            alt.append(x509.DNSName(name))
            for address in addresses:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(address)))
                except ValueError:
                    alt.append(x509.DNSName(_check_dns_name(address)))
        usage = [ExtendedKeyUsageOID.CLIENT_AUTH] + (
            [ExtendedKeyUsageOID.SERVER_AUTH] if node else []
        )
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or _now() - dt.timedelta(minutes=5)
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        key_path, cert_path = out_dir / f"{name}.key", out_dir / f"{name}.crt"
        if cert_path.exists():
            raise CaError(f"{cert_path} exists; remove it first if you mean to replace it")
        write_private(key_path, _key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        entries = self.index()
        entries.append(
            Issued(
                serial=serial,
                name=name,
                roles=[role],
                tenants=sorted(tenants),
                node=node,
                not_after=cert.not_valid_after_utc.isoformat(),
            )
        )
        self._save(entries)
        return cert_path, key_path

    # -- revocation -------------------------------------------------------------------

    def revoke(self, name: str | None = None, serial: int | None = None) -> list[int]:
        """Revokes every live certificate of ``name`` (or the one ``serial``); re-signs the CRL."""
        if (name is None) == (serial is None):
            raise CaError("revoke needs a name or a serial")
        entries = self.index()
        hit = [
            e
            for e in entries
            if e.revoked_at is None and (e.name == name if name is not None else e.serial == serial)
        ]
        if not hit:
            which = name if name is not None else f"serial {serial:#x}"
            raise CaError(f"no live certificate for {which}")
        stamp = _now().isoformat()
        for e in hit:
            e.revoked_at = stamp
        self._save(entries)
        self.write_crl()
        return [e.serial for e in hit]

    def write_crl(self, days: int = 30) -> Path:
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=days))
        )
        for e in self.index():
            if e.revoked_at is not None:
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(e.serial)
                    .revocation_date(dt.datetime.fromisoformat(e.revoked_at))
                    .build()
                )
        crl = builder.sign(self.key, hashes.SHA256())
        path = self.dir / "crl.pem"
        tmp = self.dir / "crl.pem.tmp"
        tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        os.replace(tmp, path)
        return path
