"""Daemon configuration: embedded defaults < ``--dev`` defaults < TOML file < flags.

Every key of the TOML file has a flag of the same name (``[daemon] socket`` is
``--socket``; see :data:`FIELDS`), so anything can be overridden on the command line.
Unknown keys and values of the wrong type are refused with :class:`ConfigError`.
"""

from __future__ import annotations

import argparse
import math
import re
import socket
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from novacron import paths
from novacron._core import parse_cpuset

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("kv", "json")
DOMAIN_TYPES = ("auto", "kvm", "qemu")
# [hypervisor] disk_discard: what QEMU does with a guest's discard (TRIM) of a disk
DISK_DISCARDS = ("unmap", "ignore")
# [hypervisor] cpu_model: empty (libvirt's default), a mode, or a named model
# [hypervisor] storage_pool: a libvirt pool name (no '/', which libvirt refuses)
POOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
CPU_MODEL = re.compile(r"|host-model|host-passthrough|[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ConfigError(Exception):
    """The configuration cannot be used; the message says which key and why."""


@dataclass(frozen=True)
class Config:
    node_name: str = field(default_factory=socket.gethostname)
    socket: Path = paths.SYSTEM_SOCKET
    socket_group: str = "novacron"
    state_dir: Path = paths.SYSTEM_STATE_DIR
    log_level: str = "info"
    log_format: str = "kv"
    shutdown_grace_s: float = 10.0
    backups_kept: int = 7
    hypervisor_uri: str = "qemu:///system"
    domain_type: str = "auto"
    storage_pool: str = "novacron"
    hypervisor_threads: int = 8
    emulator: str = ""
    cpu_model: str = ""
    disk_discard: str = "unmap"
    storage_reserve_mib: int = 1024
    storage_overcommit: float = 0.0
    max_message_bytes: int = 8 * 1024 * 1024
    max_inflight_per_connection: int = 128
    max_connections: int = 4096
    max_connections_per_identity: int = 128
    message_timeout_s: float = 60.0
    max_pending_bytes: int = 256 * 1024 * 1024
    dedicated_cpus: str = ""
    shared_cpus: str = ""
    reserved_memory_mib: int = 512
    shared_overcommit: float = 4.0
    tls_listen: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    tls_crl: str = ""
    tls_handshake_timeout_s: float = 5.0
    tls_max_handshakes: int = 256
    rate_limit_per_s: float = 200.0
    rate_limit_burst: float = 400.0
    migration_listen: str = ""
    migration_libvirt_uri: str = ""
    migration_link_timeout_s: float = 30.0
    migration_page_store_mib: int = 1024
    migration_max_concurrent: int = 2
    migration_engine_threads: int = 1
    migration_stream_dir: Path = paths.SYSTEM_MIGRATION_STREAMS
    migration_shared_storage: str = ""
    network_reconcile_interval_s: float = 30.0
    vm_restart_limit: int = 5
    vm_restart_window_s: float = 600.0
    vm_start_concurrency: int = 4
    vm_check_interval_s: float = 30.0
    vm_no_space_resume_mib: int = 256
    vm_disk_dirs: str = ""
    vm_boot_dirs: str = ""
    vm_image_dirs: str = ""
    cluster_etcd_endpoints: str = ""
    cluster_lease_ttl_s: int = 10
    cluster_timeout_s: float = 2.0
    cluster_refresh_s: float = 600.0
    cluster_labels: str = ""
    dev: bool = False

    @property
    def db_path(self) -> Path:
        return self.state_dir / "state.db"

    @property
    def images_dir(self) -> Path:
        return self.state_dir / "images"

    @property
    def tls_port(self) -> int:
        """The TLS listener's port (0: no listener)."""
        return int(self.tls_listen.rpartition(":")[2]) if self.tls_listen else 0

    @property
    def migration_address(self) -> str:
        """Where peers open migration channels: ``[migration] listen``, else the TLS
        listener's host with the next port; empty when there is no TLS listener."""
        if self.migration_listen or not self.tls_listen:
            return self.migration_listen
        return f"{self.tls_listen.rpartition(':')[0]}:{self.tls_port + 1}"

    @property
    def etcd_endpoints(self) -> list[str]:
        return _items(self.cluster_etcd_endpoints)

    @property
    def shared_storage_dirs(self) -> tuple[str, ...]:
        """``[migration] shared_storage``: directories every node sees as the same storage."""
        return tuple(_items(self.migration_shared_storage))

    @property
    def disk_dirs(self) -> tuple[str, ...]:
        """``[vm] disk_dirs``: where callers without ``admin`` may name disk images."""
        return tuple(_items(self.vm_disk_dirs))

    @property
    def boot_dirs(self) -> tuple[str, ...]:
        """``[vm] boot_dirs``: where callers without ``admin`` may name kernels, initrds."""
        return tuple(_items(self.vm_boot_dirs))

    @property
    def image_dirs(self) -> tuple[str, ...]:
        """``[vm] image_dirs``: where callers without ``admin`` may name base images to
        copy into new volumes (``disk_dirs`` too)."""
        return tuple(_items(self.vm_image_dirs))

    @property
    def labels(self) -> dict[str, str]:
        """``[cluster] labels = "zone=a,rack=12"`` as a map."""
        pairs = (item.partition("=") for item in _items(self.cluster_labels))
        return {k.strip(): v.strip() for k, _, v in pairs}

    @property
    def libvirt_peer_uri(self) -> str:
        """How a peer's libvirtd reaches this node's (peer-to-peer migration)."""
        return self.migration_libvirt_uri or f"qemu+tls://{self.node_name}/system"


# TOML section for each key; the flag is ``--`` + the key with ``_`` as ``-``.
FIELDS: dict[str, str] = {
    "node_name": "daemon",
    "socket": "daemon",
    "socket_group": "daemon",
    "state_dir": "daemon",
    "log_level": "daemon",
    "log_format": "daemon",
    "shutdown_grace_s": "daemon",
    "backups_kept": "daemon",
    "hypervisor_uri": "hypervisor",
    "domain_type": "hypervisor",
    "storage_pool": "hypervisor",
    "hypervisor_threads": "hypervisor",
    "emulator": "hypervisor",
    "cpu_model": "hypervisor",
    "disk_discard": "hypervisor",
    "storage_reserve_mib": "hypervisor",
    "storage_overcommit": "hypervisor",
    "max_message_bytes": "rpc",
    "max_inflight_per_connection": "rpc",
    "max_connections": "rpc",
    "max_connections_per_identity": "rpc",
    "message_timeout_s": "rpc",
    "max_pending_bytes": "rpc",
    "dedicated_cpus": "placement",
    "shared_cpus": "placement",
    "reserved_memory_mib": "placement",
    "shared_overcommit": "placement",
    "tls_listen": "tls",
    "tls_cert": "tls",
    "tls_key": "tls",
    "tls_ca": "tls",
    "tls_crl": "tls",
    "tls_handshake_timeout_s": "tls",
    "tls_max_handshakes": "tls",
    "rate_limit_per_s": "auth",
    "rate_limit_burst": "auth",
    "migration_listen": "migration",
    "migration_libvirt_uri": "migration",
    "migration_link_timeout_s": "migration",
    "migration_page_store_mib": "migration",
    "migration_max_concurrent": "migration",
    "migration_engine_threads": "migration",
    "migration_stream_dir": "migration",
    "migration_shared_storage": "migration",
    "network_reconcile_interval_s": "network",
    "vm_restart_limit": "vm",
    "vm_restart_window_s": "vm",
    "vm_start_concurrency": "vm",
    "vm_check_interval_s": "vm",
    "vm_no_space_resume_mib": "vm",
    "vm_disk_dirs": "vm",
    "vm_boot_dirs": "vm",
    "vm_image_dirs": "vm",
    "cluster_etcd_endpoints": "cluster",
    "cluster_lease_ttl_s": "cluster",
    "cluster_timeout_s": "cluster",
    "cluster_refresh_s": "cluster",
    "cluster_labels": "cluster",
}
_TOML_KEY = {
    "hypervisor_uri": "uri",
    "hypervisor_threads": "threads",
    "tls_listen": "listen",
    "tls_cert": "cert",
    "tls_key": "key",
    "tls_ca": "ca",
    "tls_crl": "crl",
    "tls_handshake_timeout_s": "handshake_timeout_s",
    "tls_max_handshakes": "max_handshakes",
    "migration_listen": "listen",
    "migration_libvirt_uri": "libvirt_uri",
    "migration_link_timeout_s": "link_timeout_s",
    "migration_page_store_mib": "page_store_mib",
    "migration_max_concurrent": "max_concurrent",
    "migration_engine_threads": "engine_threads",
    "migration_stream_dir": "stream_dir",
    "migration_shared_storage": "shared_storage",
    "network_reconcile_interval_s": "reconcile_interval_s",
    "vm_restart_limit": "restart_limit",
    "vm_restart_window_s": "restart_window_s",
    "vm_start_concurrency": "start_concurrency",
    "vm_check_interval_s": "check_interval_s",
    "vm_no_space_resume_mib": "no_space_resume_mib",
    "vm_disk_dirs": "disk_dirs",
    "vm_boot_dirs": "boot_dirs",
    "vm_image_dirs": "image_dirs",
    "cluster_etcd_endpoints": "etcd_endpoints",
    "cluster_lease_ttl_s": "lease_ttl_s",
    "cluster_timeout_s": "timeout_s",
    "cluster_refresh_s": "refresh_s",
    "cluster_labels": "labels",
}
_TYPES = {f.name: f.type for f in fields(Config)}
_CPUSETS = {"dedicated_cpus", "shared_cpus"}  # empty means none / the rest
_EMPTY_OK = _CPUSETS | {
    "emulator",
    "cpu_model",
    "tls_listen",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "tls_crl",
    "migration_listen",
    "migration_libvirt_uri",
    "migration_shared_storage",
    "vm_disk_dirs",
    "vm_boot_dirs",
    "vm_image_dirs",
    "cluster_etcd_endpoints",
    "cluster_labels",
}
_ZERO_OK = {
    "reserved_memory_mib",
    "migration_page_store_mib",
    "max_connections",
    "max_connections_per_identity",
    "max_pending_bytes",
    "tls_max_handshakes",
    "vm_restart_limit",
    "storage_reserve_mib",
    "vm_no_space_resume_mib",
}
# numbers with bounds beyond "not negative" (and, for ints not in _ZERO_OK, "not zero")
_RANGES: dict[str, tuple[float, float]] = {
    "backups_kept": (1, 10_000),
    "migration_engine_threads": (1, 64),
    "shared_overcommit": (1, 64),
    "vm_restart_limit": (0, 1000),
    "vm_start_concurrency": (1, 256),
    "vm_no_space_resume_mib": (0, 1 << 30),
    "storage_overcommit": (0, 1000),
    "vm_restart_window_s": (1, 7 * 86400),
}


def _items(text: str) -> list[str]:
    """A comma-separated setting's items, stripped, empty ones left out."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _in_range(name: str, number: float) -> bool:
    low, high = _RANGES.get(name, (-math.inf, math.inf))
    return low <= number <= high


def _coerce(name: str, value: Any) -> Any:
    kind = _TYPES[name]
    try:
        if kind == "Path":
            if not isinstance(value, str) or not value:
                raise TypeError
            return Path(value)
        if kind == "int":
            if isinstance(value, bool | float):  # (TOML's 1.5 is no count of anything)
                raise TypeError
            number = int(value)
            if number < 0 or (number == 0 and name not in _ZERO_OK) or not _in_range(name, number):
                raise ValueError
            return number
        if kind == "float":
            if isinstance(value, bool):
                raise TypeError
            real = float(value)
            if real < 0 or not _in_range(name, real):
                raise ValueError
            return real
        if not isinstance(value, str) or (not value and name not in _EMPTY_OK):
            raise TypeError
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} is not a valid {kind}") from None
    if name == "log_level" and value.lower() not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
    if name == "domain_type" and value not in DOMAIN_TYPES:
        raise ConfigError(f"domain_type must be one of {', '.join(DOMAIN_TYPES)}")
    if name == "disk_discard" and value not in DISK_DISCARDS:
        raise ConfigError(f"disk_discard must be one of {', '.join(DISK_DISCARDS)}")
    if name == "log_format" and value not in LOG_FORMATS:
        raise ConfigError(f"log_format must be one of {', '.join(LOG_FORMATS)}")
    if name in _CPUSETS:
        try:
            parse_cpuset(value)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    return value.lower() if name == "log_level" else value


def dev_defaults() -> Config:
    return Config(
        socket=paths.dev_socket(),
        state_dir=paths.dev_state_dir(),
        migration_stream_dir=paths.dev_migration_streams(),
        hypervisor_uri="test:///default",
        dev=True,
    )


def from_toml(base: Config, text: str, origin: str) -> Config:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    known = {(section, _TOML_KEY.get(name, name)): name for name, section in FIELDS.items()}
    changes: dict[str, Any] = {}
    for section, table in doc.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: top-level key {section!r} must be a [section]")
        for key, value in table.items():
            name = known.get((section, key))
            if name is None:
                raise ConfigError(f"{origin}: unknown key [{section}] {key}")
            changes[name] = _coerce(name, value)
    return replace(base, **changes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument(
        "--dev",
        action="store_true",
        help="development mode: libvirt test:///default, per-user state and socket, no root",
    )
    for name, section in FIELDS.items():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            help=f"overrides [{section}] {_TOML_KEY.get(name, name)}",
        )


def load(args: argparse.Namespace) -> Config:
    """Builds the configuration from parsed command-line arguments."""
    config = dev_defaults() if args.dev else Config()
    path: Path | None = args.config
    if path is None and not args.dev and paths.SYSTEM_CONFIG.exists():
        path = paths.SYSTEM_CONFIG
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        config = from_toml(config, text, str(path))
    overrides = {
        name: _coerce(name, getattr(args, name))
        for name in FIELDS
        if getattr(args, name, None) is not None
    }
    return check(replace(config, **overrides))


def check(config: Config) -> Config:
    """Rules that span keys."""
    if config.tls_listen:
        missing = [k for k in ("tls_cert", "tls_key", "tls_ca") if not getattr(config, k)]
        if missing:
            raise ConfigError(f"[tls] listen needs {', '.join(m[4:] for m in missing)}")
    if config.migration_listen and not config.tls_listen:
        raise ConfigError("[migration] listen needs [tls] listen (node certificates)")
    if config.etcd_endpoints:
        missing = [k for k in ("tls_cert", "tls_key", "tls_ca") if not getattr(config, k)]
        if missing:
            raise ConfigError(
                f"[cluster] etcd_endpoints needs [tls] {', '.join(m[4:] for m in missing)}"
            )
        bad = [e for e in config.etcd_endpoints if not e.startswith("https://")]
        if bad:
            raise ConfigError(f"[cluster] etcd_endpoints must be https:// URLs: {', '.join(bad)}")
    streams = config.migration_stream_dir
    if not streams.is_absolute() or len(str(streams).encode()) > paths.MAX_MIGRATION_STREAM_DIR:
        most = paths.MAX_MIGRATION_STREAM_DIR
        raise ConfigError(
            f"[migration] stream_dir must be an absolute path of at most {most} bytes"
            f" (a Unix socket's path inside it must fit in {paths.MAX_SOCKET_PATH})"
        )
    if not all(d.startswith("/") for d in config.shared_storage_dirs):
        raise ConfigError(
            "[migration] shared_storage must be absolute directories, comma-separated"
        )
    offers = (
        ("disk_dirs", config.disk_dirs),
        ("boot_dirs", config.boot_dirs),
        ("image_dirs", config.image_dirs),
    )
    for key, dirs in offers:
        if not all(d.startswith("/") for d in dirs):
            raise ConfigError(f"[vm] {key} must be absolute directories, comma-separated")
    if not POOL_NAME.fullmatch(config.storage_pool):
        raise ConfigError(
            "[hypervisor] storage_pool must be 1-64 letters, digits, '.', '_' or '-', starting "
            f"with a letter or digit: {config.storage_pool!r}"
        )
    if not CPU_MODEL.fullmatch(config.cpu_model):
        raise ConfigError(
            "[hypervisor] cpu_model must be empty, host-model, host-passthrough or the name "
            f"of a CPU model libvirt knows (letters, digits, '.', '_', '-'): {config.cpu_model!r}"
        )
    if any("=" not in item for item in _items(config.cluster_labels)):
        raise ConfigError('[cluster] labels must look like "zone=a,rack=12"')
    return config
