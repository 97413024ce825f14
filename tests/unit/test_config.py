from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from novacron import config


def parse(*argv: str) -> config.Config:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return config.load(parser.parse_args(list(argv)))


def test_production_defaults() -> None:
    c = config.Config()
    assert c.hypervisor_uri == "qemu:///system"
    assert c.state_dir == Path("/var/lib/novacron")
    assert c.socket == Path("/run/novacron/novacrond.sock")
    assert c.max_message_bytes == 8 * 1024 * 1024


def test_dev_mode_uses_test_driver_and_user_dirs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    c = parse("--dev")
    assert c.hypervisor_uri == "test:///default"
    assert c.socket == tmp_path / "run" / "novacron" / "novacrond.sock"
    assert c.state_dir.is_relative_to(tmp_path / "state")
    assert c.dev
    # a runtime dir too long for a socket path inside it: a short per-user one instead
    assert len(str(tmp_path / "run" / "novacron" / "migration")) > 80
    assert c.migration_stream_dir == Path(f"/tmp/novacron-{os.getuid()}/migration")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert parse("--dev").migration_stream_dir == Path("/run/user/1000/novacron/migration")


def test_migration_stream_dir_must_hold_socket_paths() -> None:
    assert parse("--dev").migration_stream_dir.is_absolute()
    assert config.Config().migration_stream_dir == Path("/run/novacron/migration")
    assert parse("--dev", "--migration-stream-dir", "/" + "d" * 79).migration_stream_dir
    for bad in ("/" + "d" * 80, "relative/dir"):
        with pytest.raises(config.ConfigError, match="stream_dir"):
            parse("--dev", "--migration-stream-dir", bad)


def test_toml_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "n.toml"
    f.write_text(
        '[daemon]\nnode_name = "h1"\nlog_level = "DEBUG"\n'
        '[hypervisor]\nuri = "qemu:///session"\nthreads = 3\n[rpc]\nmax_message_bytes = 4096\n'
        "[migration]\nengine_threads = 2\n"
    )
    c = parse("--config", str(f), "--hypervisor-uri", "test:///default", "--node-name", "h2")
    assert c.hypervisor_uri == "test:///default"  # flag beats file
    assert c.node_name == "h2"
    assert c.log_level == "debug"
    assert c.hypervisor_threads == 3
    assert c.max_message_bytes == 4096
    assert c.migration_engine_threads == 2


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[daemon]\nbogus = 1\n", "unknown key"),
        ("[hypervisor]\nthreads = 'many'\n", "threads"),
        ("[hypervisor]\nthreads = -1\n", "threads"),
        ("[daemon]\nlog_level = 'loud'\n", "log_level"),
        ("daemon = 3\n", "section"),
        ("[daemon\n", "n.toml"),
        ("[rpc]\nmax_message_bytes = true\n", "max_message_bytes"),
        ("[placement]\ndedicated_cpus = '3-1'\n", "dedicated_cpus"),
        ("[placement]\nshared_cpus = 'all'\n", "shared_cpus"),
        ("[placement]\nshared_overcommit = 0.5\n", "shared_overcommit"),
        ("[placement]\nreserved_memory_mib = -1\n", "reserved_memory_mib"),
        ("[cluster]\netcd_endpoints = 'https://e1:2379'\n", "needs \\[tls\\] cert"),
        ("[cluster]\nlabels = 'zone'\n", "labels"),
        ("[cluster]\nlease_ttl_s = 0\n", "lease_ttl_s"),
        ("[network]\nreconcile_interval_s = -1\n", "reconcile_interval_s"),
        ("[migration]\nengine_threads = 0\n", "engine_threads"),
        ("[migration]\nengine_threads = 65\n", "engine_threads"),
        ("[migration]\nshared_storage = 'srv/vms'\n", "shared_storage"),
        ("[migration]\nshared_storage = ['/srv/vms']\n", "shared_storage"),
        ("[rpc]\nmax_connections = -1\n", "max_connections"),
        ("[rpc]\nmax_connections_per_identity = 1.5\n", "max_connections_per_identity"),
        ("[rpc]\nmessage_timeout_s = -1\n", "message_timeout_s"),
        ("[vm]\nrestart_limit = -1\n", "restart_limit"),
        ("[vm]\nrestart_limit = 1001\n", "restart_limit"),
        ("[vm]\nrestart_window_s = 0\n", "restart_window_s"),
        ("[vm]\nstart_concurrency = 0\n", "start_concurrency"),
        ("[vm]\ncheck_interval_s = -5\n", "check_interval_s"),
        ("[vm]\nno_space_resume_mib = -1\n", "no_space_resume_mib"),
        ("[hypervisor]\nstorage_reserve_mib = -1\n", "storage_reserve_mib"),
        ("[hypervisor]\nstorage_overcommit = -0.5\n", "storage_overcommit"),
        ("[hypervisor]\nstorage_overcommit = 1001\n", "storage_overcommit"),
        ("[vm]\ndisk_dirs = 'srv/images'\n", "disk_dirs"),
        ("[vm]\nboot_dirs = '/boot, boot2'\n", "boot_dirs"),
        ("[vm]\ndisk_dirs = ['/srv']\n", "disk_dirs"),
        ("[hypervisor]\ncpu_model = 'host model'\n", "cpu_model"),
        ("[hypervisor]\ncpu_model = '-cpu host'\n", "cpu_model"),
        ('[hypervisor]\ncpu_model = "x\'/><cpu"\n', "cpu_model"),
        ("[hypervisor]\ndisk_discard = 'on'\n", "disk_discard"),
        ("[hypervisor]\nstorage_pool = '/srv/pool'\n", "storage_pool"),
        ("[hypervisor]\nstorage_pool = ''\n", "storage_pool"),
        ("[hypervisor]\nstorage_pool = '-x'\n", "storage_pool"),
        ("[hypervisor]\ndisk_discard = ''\n", "disk_discard"),
    ],
)
def test_bad_config_is_refused_with_the_key(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "n.toml"
    f.write_text(text)
    with pytest.raises(config.ConfigError, match=needle):
        parse("--config", str(f))


def test_cluster_keys(tmp_path: Path) -> None:
    f = tmp_path / "n.toml"
    f.write_text(
        "[tls]\nlisten = '127.0.0.1:7443'\ncert = '/c'\nkey = '/k'\nca = '/ca'\n"
        "[cluster]\netcd_endpoints = 'https://10.0.0.1:2379, https://10.0.0.2:2379'\n"
        "labels = 'zone=a, rack=12'\nlease_ttl_s = 15\n"
    )
    c = parse("--config", str(f))
    assert c.etcd_endpoints == ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
    assert c.labels == {"zone": "a", "rack": "12"}
    assert c.cluster_lease_ttl_s == 15 and c.cluster_timeout_s == 2.0
    with pytest.raises(config.ConfigError, match="https://"):
        parse("--config", str(f), "--cluster-etcd-endpoints", "http://10.0.0.1:2379")
    dev = parse("--dev")
    assert dev.etcd_endpoints == [] and dev.labels == {}


def test_shared_storage_is_a_list_of_directories(tmp_path: Path) -> None:
    assert parse("--dev").shared_storage_dirs == ()
    f = tmp_path / "n.toml"
    f.write_text("[migration]\nshared_storage = '/srv/vms, /mnt/cluster/images'\n")
    assert parse("--config", str(f)).shared_storage_dirs == ("/srv/vms", "/mnt/cluster/images")
    flagged = parse("--dev", "--migration-shared-storage", "/nfs")
    assert flagged.shared_storage_dirs == ("/nfs",)


def test_host_file_directories_are_lists_offered_to_non_admins(tmp_path: Path) -> None:
    dev = parse("--dev")
    assert (dev.disk_dirs, dev.boot_dirs) == ((), ())  # nothing by default
    f = tmp_path / "n.toml"
    f.write_text("[vm]\ndisk_dirs = '/srv/images/{tenant}, /srv/shared'\nboot_dirs = '/srv/boot'\n")
    c = parse("--config", str(f))
    assert c.disk_dirs == ("/srv/images/{tenant}", "/srv/shared")
    assert c.boot_dirs == ("/srv/boot",)
    assert parse("--dev", "--vm-boot-dirs", "/k1,/k2").boot_dirs == ("/k1", "/k2")


def test_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="cannot read"):
        parse("--config", str(tmp_path / "nope.toml"))


def test_every_key_has_a_flag() -> None:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    flags = {a.dest for a in parser._actions}
    assert set(config.FIELDS) <= flags
    fields = {f for f in config.Config.__dataclass_fields__ if f != "dev"}
    assert fields == set(config.FIELDS)


def test_shipped_example_config_parses() -> None:
    example = Path(__file__).resolve().parents[2] / "systemd" / "novacrond.toml.example"
    c = config.from_toml(config.Config(), example.read_text(), str(example))
    assert c.hypervisor_uri == "qemu:///system"
    assert c.domain_type == "auto"
    assert (c.dedicated_cpus, c.shared_cpus, c.reserved_memory_mib) == ("", "", 512)


def test_placement_keys(tmp_path: Path) -> None:
    f = tmp_path / "n.toml"
    f.write_text('[placement]\ndedicated_cpus = "2-7,^4"\nreserved_memory_mib = 0\n')
    c = parse("--config", str(f), "--shared-cpus", "0-1", "--shared-overcommit", "2")
    assert (c.dedicated_cpus, c.shared_cpus) == ("2-7,^4", "0-1")
    assert (c.reserved_memory_mib, c.shared_overcommit) == (0, 2.0)


def test_tls_listen_needs_its_files(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="cert, key, ca"):
        parse("--tls-listen", "127.0.0.1:7443")
    c = parse(
        "--tls-listen", "127.0.0.1:7443", "--tls-cert", "/c", "--tls-key", "/k", "--tls-ca", "/a"
    )
    assert (c.tls_listen, c.tls_crl, c.tls_handshake_timeout_s) == ("127.0.0.1:7443", "", 5.0)
    f = tmp_path / "n.toml"
    f.write_text("[auth]\nrate_limit_per_s = 0\n[tls]\nhandshake_timeout_s = 2\n")
    c = parse("--config", str(f))
    assert (c.rate_limit_per_s, c.tls_handshake_timeout_s) == (0.0, 2.0)


def test_connection_limits(tmp_path: Path) -> None:
    c = config.Config()
    limits = (c.max_connections, c.max_connections_per_identity, c.message_timeout_s)
    assert limits == (4096, 128, 60.0)
    assert c.tls_max_handshakes == 256
    assert c.max_pending_bytes == 256 << 20
    f = tmp_path / "n.toml"
    f.write_text(
        "[rpc]\nmax_connections = 0\nmax_connections_per_identity = 8\nmax_pending_bytes = 0\n"
    )
    c = parse("--config", str(f), "--message-timeout-s", "0", "--tls-max-handshakes", "0")
    assert (c.max_connections, c.max_connections_per_identity, c.message_timeout_s) == (0, 8, 0)
    assert c.tls_max_handshakes == 0 and c.max_pending_bytes == 0
    assert parse("--max-pending-bytes", "1048576").max_pending_bytes == 1 << 20


def test_backups_kept(tmp_path: Path) -> None:
    assert config.Config().backups_kept == 7
    assert parse("--backups-kept", "2").backups_kept == 2
    f = tmp_path / "b.toml"
    for bad in ("0", "-1", "1.5", "10001"):
        f.write_text(f"[daemon]\nbackups_kept = {bad}\n")
        with pytest.raises(config.ConfigError, match="backups_kept"):
            parse("--config", str(f))


def test_vm_keeper_keys(tmp_path: Path) -> None:
    c = config.Config()
    assert (c.vm_restart_limit, c.vm_restart_window_s) == (5, 600.0)
    assert (c.vm_start_concurrency, c.vm_check_interval_s) == (4, 30.0)
    f = tmp_path / "v.toml"
    f.write_text(
        "[vm]\nrestart_limit = 0\nrestart_window_s = 60\nstart_concurrency = 1\n"
        "check_interval_s = 0\n"
    )
    c = parse("--config", str(f), "--vm-start-concurrency", "8")
    assert (c.vm_restart_limit, c.vm_restart_window_s) == (0, 60.0)
    assert (c.vm_start_concurrency, c.vm_check_interval_s) == (8, 0.0)


def test_cpu_model_is_a_mode_or_a_name(tmp_path: Path) -> None:
    assert parse("--dev").cpu_model == ""  # libvirt's default
    f = tmp_path / "n.toml"
    for model in ("host-model", "host-passthrough", "Haswell-noTSX", "EPYC-v4", "qemu64"):
        f.write_text(f"[hypervisor]\ncpu_model = '{model}'\n")
        assert parse("--config", str(f)).cpu_model == model
    assert parse("--dev", "--cpu-model", "host-model").cpu_model == "host-model"


def test_disk_discard_unmaps_unless_told_to_ignore(tmp_path: Path) -> None:
    assert parse("--dev").disk_discard == "unmap"  # a thin volume gets its space back
    f = tmp_path / "n.toml"
    f.write_text("[hypervisor]\ndisk_discard = 'ignore'\n")
    assert parse("--config", str(f)).disk_discard == "ignore"
    assert parse("--dev", "--disk-discard", "ignore").disk_discard == "ignore"


def test_storage_reserve_and_the_room_a_paused_guest_waits_for(tmp_path: Path) -> None:
    c = parse("--dev")
    assert (c.storage_reserve_mib, c.vm_no_space_resume_mib) == (1024, 256)
    assert c.storage_overcommit == 0.0  # (no bound on what thin volumes promise)
    assert parse("--dev", "--storage-overcommit", "1.5").storage_overcommit == 1.5
    f = tmp_path / "n.toml"
    f.write_text("[hypervisor]\nstorage_reserve_mib = 0\n[vm]\nno_space_resume_mib = 0\n")
    c = parse("--config", str(f))
    assert (c.storage_reserve_mib, c.vm_no_space_resume_mib) == (0, 0)  # none; never
