"""The ``novacron`` CLI as a user runs it: a subprocess against the real daemon."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.daemon_harness import Daemon


def cli(daemon: Daemon, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NOVACRON_SOCKET": str(daemon.socket), "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "novacron.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def test_vm_workflow_with_tables_and_json(daemon: Daemon) -> None:
    out = cli(daemon, "vm", "create", "cli1", "--vcpus", "2", "--memory", "128", "--disk", "1")
    assert "cli1" in out.stdout and "stopped" in out.stdout
    cli(daemon, "vm", "start", "cli1")
    table = cli(daemon, "vm", "list").stdout
    assert "NAME" in table and "cli1" in table and "running" in table
    listed = json.loads(cli(daemon, "--json", "vm", "list").stdout)
    assert listed[0]["name"] == "cli1" and listed[0]["state"] == "running"
    cli(daemon, "vm", "pause", "cli1")
    cli(daemon, "vm", "resume", "cli1")
    made = cli(daemon, "vm", "snapshot", "create", "cli1", "snap1", "--description", "before")
    assert made.stdout.strip() == "cli1: snapshot snap1 created"
    snaps = json.loads(cli(daemon, "--json", "vm", "snapshot", "list", "cli1").stdout)
    assert snaps[0]["name"] == "snap1" and snaps[0]["description"] == "before"
    back = cli(daemon, "vm", "snapshot", "revert", "cli1", "snap1")
    assert back.stdout.strip() == "cli1: snapshot snap1 reverted"
    gone = cli(daemon, "vm", "snapshot", "delete", "cli1", "snap1")
    assert gone.stdout.strip() == "cli1: snapshot snap1 deleted"
    cli(daemon, "vm", "reboot", "cli1")
    down = json.loads(cli(daemon, "--json", "vm", "shutdown", "cli1", "--timeout", "5").stdout)
    assert down["state"] == "stopped"
    got = json.loads(cli(daemon, "--json", "vm", "get", "cli1").stdout)
    assert got["vcpus"] == 2 and got["memory_mib"] == 128
    cli(daemon, "vm", "delete", "cli1")
    assert json.loads(cli(daemon, "--json", "vm", "list").stdout) == []


def test_restart_policy_from_the_cli(daemon: Daemon) -> None:
    cli(daemon, "vm", "create", "left", "--memory", "64", "--restart", "never")
    listed = cli(daemon, "vm", "list").stdout
    assert "DESIRED" in listed and re.search(r"left .* stopped .* stopped", listed), listed
    shown = cli(daemon, "vm", "get", "left").stdout
    assert re.search(r"^restart\s+never$", shown, re.M), shown
    assert re.search(r"^restarts\s+0 in the last 600 s$", shown, re.M), shown
    got = json.loads(cli(daemon, "--json", "vm", "get", "left").stdout)
    assert got["restart"] == "never" and got["restarts"]["gave_up"] is False
    cli(daemon, "vm", "update", "left", "--restart", "on-failure")
    assert json.loads(cli(daemon, "--json", "vm", "get", "left").stdout)["restart"] == "on-failure"
    grown = json.loads(
        cli(daemon, "--json", "vm", "update", "left", "--vcpus", "2", "--memory", "96").stdout
    )
    assert (grown["vcpus"], grown["memory_mib"], grown["restart"]) == (2, 96, "on-failure")
    cli(daemon, "vm", "update", "left", "--max-vcpus", "4")
    cli(daemon, "vm", "start", "left")
    plugged = json.loads(cli(daemon, "--json", "vm", "update", "left", "--vcpus", "3").stdout)
    assert (plugged["vcpus"], plugged["max_vcpus"], plugged["state"]) == (3, 4, "running")
    shown = cli(daemon, "vm", "get", "left").stdout
    assert re.search(r"^max_vcpus\s+4$", shown, re.M), shown
    over = cli(daemon, "vm", "update", "left", "--vcpus", "5", check=False)
    assert over.returncode != 0 and "max_vcpus (4) is below vcpus (5)" in over.stderr
    cli(daemon, "vm", "stop", "left")
    cli(daemon, "vm", "update", "left", "--max-memory", "256")
    cli(daemon, "vm", "start", "left")
    ballooned = json.loads(cli(daemon, "--json", "vm", "update", "left", "--memory", "200").stdout)
    assert (ballooned["memory_mib"], ballooned["max_memory_mib"]) == (200, 256)
    assert re.search(r"^max_memory_mib\s+256$", cli(daemon, "vm", "get", "left").stdout, re.M)
    cli(daemon, "vm", "stop", "left")
    refused = cli(daemon, "vm", "create", "x", "--restart", "always", check=False)
    assert refused.returncode == 2 and "invalid choice" in refused.stderr
    cli(daemon, "vm", "delete", "left")


def test_vm_disks_from_the_cli(daemon: Daemon) -> None:
    cli(daemon, "vm", "create", "dsk", "--memory", "64", "--disk", "1")
    shown = cli(daemon, "vm", "disk", "attach", "dsk", "--size", "2").stdout
    assert re.search(r"vdb .*dsk-vdb\.qcow2 .* True .* 2 ", shown), shown
    # (the test driver grows nothing: the refusals and a resize to the same size)
    shrink = cli(daemon, "vm", "disk", "resize", "dsk", "vdb", "--size", "1", check=False)
    assert shrink.returncode == 1 and "invalid_params" in shrink.stderr, shrink.stderr
    assert "has 2 GiB: a disk only grows" in shrink.stderr
    same = cli(daemon, "vm", "disk", "resize", "dsk", "vdb", "--size", "2").stdout
    assert re.search(r"vda .* 1 .*\n.*vdb .* 2 ", same), same
    limited = cli(daemon, "--json", "vm", "disk", "limit", "dsk", "vdb", "--read-iops", "300")
    assert [d["limits"] for d in json.loads(limited.stdout)["disks"]] == [None, {"read_iops": 300}]
    nothing = cli(daemon, "vm", "disk", "limit", "dsk", "vdb", check=False)
    assert nothing.returncode == 1 and "at least one limit" in nothing.stderr, nothing.stderr
    copy = json.loads(cli(daemon, "--json", "vm", "clone", "dsk", "dsk-copy").stdout)
    assert [d["path"].rsplit("/", 1)[1] for d in copy["disks"]] == [
        "dsk-copy-vda.qcow2",
        "dsk-copy-vdb.qcow2",
    ]
    assert copy["disks"][1]["limits"] == {"read_iops": 300}  # a clone keeps them
    cli(daemon, "vm", "delete", "dsk-copy")
    gone = cli(daemon, "vm", "disk", "detach", "dsk", "vdb").stdout
    assert "deleted " in gone and "dsk-vdb.qcow2" in gone, gone
    both = cli(daemon, "vm", "disk", "attach", "dsk", "--size", "1", "--path", "/x", check=False)
    assert both.returncode == 1 and "path goes with neither size_gib nor image" in both.stderr
    paths = cli(daemon, "vm", "disk", "attach", "dsk", "--image", "/a", "--path", "/x", check=False)
    assert paths.returncode == 2 and "not allowed with" in paths.stderr
    doc = json.loads(
        cli(daemon, "--json", "vm", "disk", "detach", "dsk", "vda", "--keep-volume").stdout
    )
    assert doc["disks"] == [] and doc["volumes_deleted"] == []
    cli(daemon, "vm", "delete", "dsk")


def test_vm_stats_from_the_cli(daemon: Daemon) -> None:
    cli(daemon, "vm", "create", "busy", "--vcpus", "2", "--memory", "64", "--disk", "1", "--start")
    cli(daemon, "vm", "create", "idle", "--memory", "64")
    table = cli(daemon, "vm", "stats", "--interval", "0.2").stdout
    assert "CPU %" in table and "DISK WRITE/s" in table, table
    assert re.search(r"busy .* running .* \d+\.\d", table), table
    assert re.search(r"idle .* stopped", table), table
    one = cli(daemon, "vm", "stats", "busy", "--interval", "0.2").stdout
    assert re.search(r"^ *vda *. disk ", one, re.M), one  # the per-device table
    doc = json.loads(cli(daemon, "--json", "vm", "stats", "busy", "--interval", "0.2").stdout)
    assert doc["name"] == "busy" and doc["rates"]["seconds"] > 0
    assert doc["rates"]["cpu_percent"] >= 0 and doc["disks"][0]["target"] == "vda"
    once = json.loads(cli(daemon, "--json", "vm", "stats", "--interval", "0").stdout)
    assert [(d["name"], d["rates"]) for d in once] == [("busy", None), ("idle", None)]
    both = cli(daemon, "vm", "stats", "busy", "--tenant", "default", check=False)
    assert both.returncode == 1 and "invalid_params" in both.stderr
    named = cli(daemon, "vm", "stats", "busy", "--cluster", check=False)
    assert named.returncode == 1 and "invalid_params" in named.stderr
    alone = cli(daemon, "vm", "stats", "--cluster", check=False)  # not in a cluster
    assert alone.returncode == 3 and "unavailable" in alone.stderr, alone.stderr


def test_metrics_for_a_textfile_collector(daemon: Daemon, tmp_path: Path) -> None:
    cli(daemon, "vm", "create", "met1", "--memory", "64", "--disk", "1", "--start")
    cli(daemon, "vm", "create", "met2", "--memory", "64", "--tenant", "other")
    text = cli(daemon, "metrics").stdout
    lines = text.split("\n")
    assert "# TYPE novacron_vm_cpu_seconds_total counter" in lines
    assert 'novacron_vm_info{tenant="default",vm="met1",state="running",reason="booted"} 1' in lines
    assert 'novacron_vm_running{tenant="other",vm="met2"} 0' in lines
    [cpu] = [
        line
        for line in lines
        if line.startswith('novacron_vm_cpu_seconds_total{tenant="default",vm="met1"}')
    ]
    assert float(cpu.rsplit(" ", 1)[1]) > 0
    assert "novacron_node_cordoned 0" in lines
    assert not any(
        'vm="met2"' in line
        for line in cli(daemon, "metrics", "--tenant", "default").stdout.split("\n")
    )
    collected = tmp_path / "textfile"
    collected.mkdir()
    target = collected / "novacron.prom"
    assert cli(daemon, "metrics", "--output", str(target)).stdout == ""
    written = target.read_text().split("\n")
    assert 'novacron_vm_running{tenant="default",vm="met1"} 1' in written
    assert [p.name for p in collected.iterdir()] == ["novacron.prom"]
    for name in ("met1", "met2"):
        cli(daemon, "vm", "delete", name, "--force")


def test_a_scripts_json_command_loads_neither_rich_nor_cryptography(daemon: Daemon) -> None:
    """A CLI command pays for every import at start; scripts (``--json``) need no tables
    and no CA code (the bench times ``novacron vm migrate`` as a whole)."""
    probe = (
        "import sys; from novacron.cli.main import main; rc = main(sys.argv[1:]); "
        "heavy = {'rich', 'cryptography', 'trio'} & {m.split('.')[0] for m in sys.modules}; "
        "print(repr(sorted(heavy)), file=sys.stderr); sys.exit(rc)"
    )
    env = {**os.environ, "NOVACRON_SOCKET": str(daemon.socket)}
    for args, loaded in (
        (["--json", "vm", "list"], "[]"),
        (["--json", "op", "list"], "[]"),
        (["vm", "list"], "['rich']"),  # a table for people does load rich
    ):
        done = subprocess.run(
            [sys.executable, "-c", probe, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        )
        assert done.stderr.strip().splitlines()[-1] == loaded, (args, done.stderr)


def test_errors_print_code_and_exit_nonzero(daemon: Daemon) -> None:
    done = cli(daemon, "vm", "get", "ghost", check=False)
    assert done.returncode == 1
    assert "not_found" in done.stderr and "ghost" in done.stderr
    done = cli(daemon, "vm", "create", "Bad_Name", check=False)
    assert done.returncode == 1 and "invalid_params" in done.stderr


def test_bad_local_input_is_a_clean_error_not_a_traceback(daemon: Daemon, tmp_path: Path) -> None:
    """Each of these crashed the CLI with a traceback (found by fuzzing its commands)."""
    missing = tmp_path / "no-such-user-data"
    done = cli(daemon, "vm", "create", "ci1", "--cloud-init-user-data", str(missing), check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"--cloud-init-user-data: cannot read {missing}" in done.stderr
    # an integer MessagePack cannot carry
    done = cli(daemon, "net", "create", "n1", "--vni", str(2**64), check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "invalid_params" in done.stderr and "cannot be sent" in done.stderr
    for args in (
        ("--timeout", "nan", "hello"),
        ("--timeout", "inf", "hello"),
        ("--timeout", "0", "hello"),  # (0 would have meant no timeout at all)
        ("vm", "stats", "--interval", "1e300"),
        ("vm", "console", "x", "--linger", "-1"),
    ):
        done = cli(daemon, *args, check=False)
        assert done.returncode == 2 and "seconds must be" in done.stderr, (args, done.stderr)
    with daemon.client() as c:
        assert [vm["name"] for vm in c.call("vm.list")] == []
        assert c.call("net.list") == []


def test_unreachable_daemon_exits_3(daemon: Daemon, tmp_path: Path) -> None:
    env = {**os.environ, "NOVACRON_SOCKET": str(tmp_path / "nope.sock")}
    done = subprocess.run(
        [sys.executable, "-m", "novacron.cli.main", "node", "info"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3 and "unavailable" in done.stderr


def test_node_info_hello_and_events(daemon: Daemon) -> None:
    shown = cli(daemon, "node", "info").stdout
    assert "TEST" in shown
    # the test driver's pool: 100 GiB, none of it used, no volumes yet; 1 GiB kept free
    assert re.search(
        r"storage\s+100\.0 GiB free of 100\.0 GiB \(\S+\), 1\.0 GiB kept free; "
        r"0 volumes of 0\.0 GiB",
        shown,
    )
    hello = json.loads(cli(daemon, "--json", "hello").stdout)
    assert hello["protocol"] == 1
    env = {**os.environ, "NOVACRON_SOCKET": str(daemon.socket)}
    with daemon.client() as c:  # (the daemon's own services subscribe too)
        before = c.call("node.info")["daemon"]["events"]["subscribers"]
    watcher = subprocess.Popen(
        [sys.executable, "-m", "novacron.cli.main", "--json", "events", "--count", "2"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        # wait until the watcher has subscribed, then cause two events
        deadline = time.monotonic() + 30
        with daemon.client() as c:
            while c.call("node.info")["daemon"]["events"]["subscribers"] <= before:
                assert time.monotonic() < deadline, "the events command never subscribed"
                time.sleep(0.1)
        cli(daemon, "vm", "create", "evcli", "--start")
        out, _ = watcher.communicate(timeout=30)
    finally:
        watcher.kill()
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["state"] for e in events] == ["defined", "running"]
    assert all(e["vm"] == "evcli" for e in events)


def test_topology_and_placement_in_the_cli(tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = Daemon(
        socket=tmp_path / "run" / "novacrond.sock",
        state_dir=tmp_path / "state",
        log=tmp_path / "novacrond.log",
        extra=["--dedicated-cpus", "2-7,10-15"],
    ).start()
    try:
        out = cli(
            d, "vm", "create", "pin", "--vcpus", "2", "--memory", "256", "--cpu-policy", "dedicated"
        ).stdout
        assert "dedicated, memory strict: node 0 vCPU 0-1 on 2,3 (256 MiB)" in out
        topo = cli(d, "node", "topology").stdout
        assert "NUMA node 0" in topo and "NUMA node 1" in topo
        assert "dedicated in use" in topo and "shared vCPUs 0/8" in topo
        as_json = json.loads(cli(d, "--json", "node", "topology").stdout)
        assert as_json["dedicated_cpus"] == "2-7,10-15"
        refused = cli(
            d, "vm", "create", "big", "--vcpus", "13", "--cpu-policy", "dedicated", check=False
        )
        assert refused.returncode == 1 and "insufficient_resources" in refused.stderr
    finally:
        assert d.stop() in (0, None)


def test_ca_certs_and_tls_from_the_cli(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import stat

    from tests.pki_harness import free_port, migration_listen

    ca_dir, out = tmp_path / "ca", tmp_path / "certs"
    run = [sys.executable, "-m", "novacron.cli.main"]
    for argv in (
        ["ca", "init", "--dir", str(ca_dir)],
        [
            "cert",
            "issue",
            "--ca-dir",
            str(ca_dir),
            "--name",
            "node1",
            "--role",
            "node",
            "--node",
            "--address",
            "127.0.0.1",
            "--out",
            str(out),
        ],
        [
            "cert",
            "issue",
            "--ca-dir",
            str(ca_dir),
            "--name",
            "ops",
            "--role",
            "operator",
            "--tenant",
            "acme",
            "--out",
            str(out),
        ],
    ):
        done = subprocess.run(run + argv, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert "PRIVATE KEY" not in done.stdout + done.stderr  # keys are never printed
    assert stat.S_IMODE((out / "ops.key").stat().st_mode) == 0o600
    port = free_port()
    d = Daemon(
        socket=tmp_path / "run" / "novacrond.sock",
        state_dir=tmp_path / "state",
        log=tmp_path / "novacrond.log",
        extra=[
            "--tls-listen",
            f"127.0.0.1:{port}",
            "--tls-cert",
            str(out / "node1.crt"),
            "--tls-key",
            str(out / "node1.key"),
            "--tls-ca",
            str(ca_dir / "ca.crt"),
            "--tls-crl",
            str(ca_dir / "crl.pem"),
            *migration_listen(),
        ],
    ).start()
    try:
        tls = [
            "--tls",
            f"127.0.0.1:{port}",
            "--cert",
            str(out / "ops.crt"),
            "--key",
            str(out / "ops.key"),
            "--ca",
            str(ca_dir / "ca.crt"),
            "--server-name",
            "node1",
        ]
        who = json.loads(cli(d, "--json", *tls, "whoami").stdout)
        assert who["principal"] == "tls:ops" and who["identity"]["tenants"] == ["acme"]
        assert "operator" in cli(d, *tls, "whoami").stdout
        listed = json.loads(cli(d, "--json", "cert", "list", "--ca-dir", str(ca_dir)).stdout)
        assert [c["name"] for c in listed] == ["node1", "ops"]
        cli(d, "cert", "revoke", "--ca-dir", str(ca_dir), "--name", "ops")
        d.signal(signal.SIGHUP)  # the daemon reads the new CRL
        time.sleep(0.5)
        refused = cli(d, *tls, "whoami", check=False)
        assert refused.returncode == 3 and "unavailable" in refused.stderr
        denied = cli(d, *tls, "audit", "tail", check=False)
        assert denied.returncode == 3
    finally:
        assert d.stop() in (0, None)


def test_quota_and_bindings_from_the_cli(daemon: Daemon) -> None:
    assert "0 / 1" in cli(daemon, "quota", "set", "acme", "--vms", "1").stdout
    cli(daemon, "vm", "create", "qa", "--tenant", "acme", "--memory", "64")
    refused = cli(daemon, "vm", "create", "qb", "--tenant", "acme", "--memory", "64", check=False)
    assert refused.returncode == 1 and "quota_exceeded" in refused.stderr
    assert "1 / 1" in cli(daemon, "quota", "get", "acme").stdout
    cli(daemon, "quota", "set", "globex", "--disk", "3")
    big = cli(daemon, "vm", "create", "qc", "--tenant", "globex", "--disk", "4", check=False)
    assert big.returncode == 1 and "quota_exceeded" in big.stderr and "disk_gib" in big.stderr
    cli(daemon, "vm", "create", "qd", "--tenant", "globex", "--memory", "64", "--disk", "3")
    assert re.search(r"^disk_gib\s+3 / 3$", cli(daemon, "quota", "get", "globex").stdout, re.M)
    doc = json.loads(cli(daemon, "--json", "quota", "get", "globex").stdout)
    assert doc["max_disk_gib"] == 3 and doc["used"]["disk_gib"] == 3
    # the throttle the tenant's new disks get
    shown = cli(daemon, "quota", "set", "globex", "--disk", "9", "--disk-write-iops", "250")
    assert re.search(r"^disk_limits\s+write_iops=250$", shown.stdout, re.M)
    made = json.loads(cli(daemon, "--json", "vm", "create", "qe", "--tenant", "globex").stdout)
    assert made["disks"] == []
    attached = json.loads(cli(daemon, "--json", "vm", "disk", "attach", "qe", "--size", "1").stdout)
    assert attached["disks"][0]["limits"] == {"write_iops": 250}
    lifted = cli(daemon, "quota", "set", "globex", "--disk", "9").stdout
    assert re.search(r"^disk_limits\s+none$", lifted, re.M)
    cli(daemon, "auth", "bind", "group:devs", "--role", "operator", "--tenant", "acme")
    assert "group:devs" in cli(daemon, "auth", "bindings").stdout
    who = json.loads(cli(daemon, "--json", "whoami").stdout)
    assert who["identity"]["tenants"] is None and "admin" in who["identity"]["roles"]


def test_migrate_and_ops_from_the_cli(daemon: Daemon) -> None:
    """Real migrations are system tests; here: the commands exist, refusals print their
    code, and the operation listing works on a node that has none."""
    cli(daemon, "vm", "create", "mig1", "--memory", "64", "--start")
    refused = cli(daemon, "vm", "migrate", "mig1", "--to", "node2:7443", check=False)
    # no node certificate here; the message keeps its brackets (no console markup)
    assert refused.returncode == 3 and "set [tls] cert, key and ca" in refused.stderr
    combined = cli(
        daemon,
        "vm",
        "migrate",
        "mig1",
        "--to",
        "n2",
        "--stall-action",
        "auto_converge",
        check=False,
    )
    assert combined.returncode == 1 and "invalid_params" in combined.stderr
    assert json.loads(cli(daemon, "--json", "op", "list").stdout) == []
    assert "OP" in cli(daemon, "op", "list").stdout
    missing = cli(daemon, "op", "get", "op-0123", check=False)
    assert missing.returncode == 1 and "not_found" in missing.stderr


def test_base_images_from_the_cli(tmp_path: Path) -> None:
    """image list shows what a copy would be; vm create --disk-image and vm disk attach
    --image reach the daemon (whose test driver then refuses the copy itself: it keeps no
    files; copies through a real libvirtd are in tests/system/test_disks.py)."""
    bases = tmp_path / "bases"
    bases.mkdir()
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(bases / "deb.qcow2"), "2G"],
        check=True,
        capture_output=True,
    )
    (bases / "tiny.raw").write_bytes(b"\x01" * 4096)
    d = Daemon(
        socket=tmp_path / "run" / "novacrond.sock",
        state_dir=tmp_path / "state",
        log=tmp_path / "novacrond.log",
        extra=["--vm-image-dirs", str(bases)],
    ).start()
    try:
        table = cli(d, "image", "list").stdout
        assert re.search(r"deb\.qcow2 .* qcow2 .* 2 ", table), table
        assert re.search(r"tiny\.raw .* raw .* 1 .* 4096", table), table
        assert f"tenant default: {bases}" in table, table
        made = cli(d, "vm", "create", "c1", "--disk-image", f"{bases}/deb.qcow2:3", check=False)
        assert made.returncode == 1 and "virStorageVolUpload" in made.stderr, made.stderr
        small = cli(d, "vm", "create", "c1", "--disk-image", f"{bases}/deb.qcow2:1", check=False)
        assert small.returncode == 1 and "more than 1 GiB" in small.stderr, small.stderr
        cli(d, "vm", "create", "c1", "--disk", "1")
        plugged = cli(d, "vm", "disk", "attach", "c1", "--image", f"{bases}/tiny.raw", check=False)
        assert plugged.returncode == 1 and "virStorageVolUpload" in plugged.stderr
        # a cloud-init seed is copied the same way (refused here the same way)
        (tmp_path / "user-data").write_text("#cloud-config\nhostname: c2\n")
        seeded = cli(
            d,
            "vm",
            "create",
            "c2",
            "--cloud-init-user-data",
            str(tmp_path / "user-data"),
            check=False,
        )
        assert seeded.returncode == 1 and "virStorageVolUpload" in seeded.stderr, seeded.stderr
        assert "c2" not in cli(d, "vm", "list").stdout
        doc = json.loads(cli(d, "--json", "image", "list").stdout)
        assert [i["name"] for i in doc["images"]] == ["deb.qcow2", "tiny.raw"]
    finally:
        assert d.stop() in (0, None)
    assert "Traceback" not in d.log_text()
