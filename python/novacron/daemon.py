"""``novacrond``: builds the service tree and runs it under trio.

Start order: state store -> hypervisor connection, storage pool, placement and
reconcile -> libvirt events -> RPC listeners (Unix socket, then TLS if configured) ->
``READY=1``. SIGTERM/SIGINT: stop accepting, let in-flight calls finish within
``shutdown_grace_s``, close, exit 0. SIGHUP: reload TLS material (certificates, CRL).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import resource
import signal
import ssl
import sys
from pathlib import Path

import trio

from novacron import __version__, errors, logs, systemd
from novacron import config as config_mod
from novacron.api import Services, build_registry
from novacron.auth.audit import AuditLog
from novacron.auth.bindings import Bindings
from novacron.client import TlsFiles
from novacron.cluster.etcd import EtcdClient
from novacron.cluster.locks import MigrationLocks
from novacron.cluster.service import ClusterService
from novacron.config import Config, ConfigError
from novacron.eventbus import EventBus
from novacron.logs import kv
from novacron.migration.service import MigrationService
from novacron.net.service import NetworkService
from novacron.net.shaper import NicShaper
from novacron.server.limits import ConnectionLimits, ConnectionSettings, PendingBudget
from novacron.server.tls import TlsConfigError, TlsServer, bind_tcp
from novacron.server.unix import SocketInUse, UnixServer, bind_unix
from novacron.state.db import StateStore
from novacron.vm.driver import Hypervisor
from novacron.vm.events import LibvirtEvents, ensure_event_impl
from novacron.vm.keeper import StateKeeper
from novacron.vm.reconcile import reconcile
from novacron.vm.service import VmService

log = logging.getLogger("novacron.daemon")


def raise_fd_limit(wanted: int = 65536) -> None:
    """Every client connection is a descriptor: lift the soft limit toward the hard one
    (systemd's ``LimitNOFILE`` sets both; by hand the soft default is often 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def prepare_dirs(config: Config) -> None:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    # traversable (libvirt's QEMU user reaches images and console logs) but not listable
    os.chmod(config.state_dir, 0o711)  # noqa: S103 - no read bit for others
    for sub in (config.images_dir, config.state_dir / "consoles"):
        sub.mkdir(exist_ok=True)
        os.chmod(sub, 0o711)  # noqa: S103 - no read bit for others
    if config.dev:
        config.socket.parent.mkdir(parents=True, exist_ok=True, mode=0o700)


def etcd_context(config: Config) -> ssl.SSLContext:
    """The client side of mutual TLS to etcd: this node's certificate, the cluster CA
    (the same client context a peer daemon gets)."""
    files = TlsFiles(Path(config.tls_cert), Path(config.tls_key), Path(config.tls_ca))
    try:
        return files.context()
    except errors.InvalidParams as exc:
        raise TlsConfigError(f"node certificate unusable for etcd: {exc.message}") from None


def tls_material(config: Config) -> tuple[Path, Path, Path, Path | None]:
    return (
        Path(config.tls_cert),
        Path(config.tls_key),
        Path(config.tls_ca),
        Path(config.tls_crl) if config.tls_crl else None,
    )


def open_store(path: Path) -> StateStore:
    old = os.umask(0o077)  # the database and its WAL files are private to the daemon
    try:
        return StateStore(path)
    finally:
        os.umask(old)


async def attach_hypervisor(
    services: Services,
    retry_s: float = 5.0,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Storage pool, capabilities and reconciliation, once libvirt answers.

    If libvirt is unreachable at start the daemon still serves (VM calls answer
    ``unavailable``) and this keeps trying every ``retry_s`` seconds.
    """
    vms, config = services.vms, services.config
    while True:
        try:
            await vms.hv_pool.run(vms.hv.ensure_pool, config.storage_pool, config.images_dir)
            await vms.hv_pool.run(vms.hv.capabilities)  # slow on QEMU: fetch once
            services.cpu_model_problem = await vms.hv_pool.run(
                vms.hv.cpu_model_problem, config.cpu_model
            )
            if services.cpu_model_problem:
                log.error(
                    "hypervisor.cpu_model_unusable",
                    extra=kv(cpu_model=config.cpu_model, error=services.cpu_model_problem),
                )
            vms.placement.load(await vms.hv_pool.run(vms.hv.numa_nodes))
            migrations = services.migrations
            leaving = await migrations.load_interrupted() if migrations else frozenset[str]()
            arriving = migrations.arriving() if migrations else frozenset[str]()
            services.reconcile_findings = await reconcile(vms, leaving, arriving)
            if migrations is not None:
                await migrations.settle_outgoing(services.reconcile_findings)
            if services.keeper is not None:
                services.keeper.ready.set()
        except errors.Unavailable as exc:
            log.error(
                "hypervisor.unavailable", extra=kv(uri=config.hypervisor_uri, error=exc.message)
            )
            task_status.started()
            task_status = trio.TASK_STATUS_IGNORED
            await trio.sleep(retry_s)
            continue
        services.hypervisor_ready = True
        task_status.started()
        return


async def serve(config: Config) -> None:
    ensure_event_impl()
    prepare_dirs(config)
    store = await trio.to_thread.run_sync(open_store, config.db_path)
    hv = Hypervisor(config.hypervisor_uri, config.domain_type)
    vms = VmService(config, hv, store)
    bus = EventBus()
    bindings = Bindings(store, vms.db_pool)
    services = Services(
        config=config, vms=vms, bus=bus, bindings=bindings, audit=AuditLog(store, vms.db_pool)
    )
    try:
        await bindings.load()
        await vms.cordon.load()
        await vms.load_restarts()
        registry = build_registry(services)
        settings = ConnectionSettings(
            config.max_message_bytes,
            config.max_inflight_per_connection,
            config.message_timeout_s,
            PendingBudget(config.max_pending_bytes),
        )
        services.pending = settings.pending
        # one count for both listeners: a caller may use either
        services.connections = ConnectionLimits(
            config.max_connections, config.max_connections_per_identity
        )
        tls = None
        if config.tls_listen:
            tls = TlsServer(
                bind_tcp(config.tls_listen),
                registry,
                bus,
                tls_material(config),
                config.tls_handshake_timeout_s,
                settings,
                services.connections,
                config.tls_max_handshakes,
            )
            services.tls = tls
        services.migrations = MigrationService(
            config, vms, bus, tls.context if tls is not None else None
        )
        keeper = StateKeeper(
            vms,
            bus,
            config.vm_check_interval_s,
            config.vm_start_concurrency,
            config.vm_no_space_resume_mib,
        )
        services.keeper = keeper
        services.networks = NetworkService(config, store, vms.db_pool, bus, vms.records)
        vms.nic_check = services.networks.check_nics
        shaper = NicShaper(
            vms,
            services.networks.kernel,
            services.networks.pool,
            bus,
            config.network_reconcile_interval_s,
        )
        services.shaper = shaper
        vms.nic_shaper = shaper.converge
        if config.etcd_endpoints:
            etcd = EtcdClient(config.etcd_endpoints, etcd_context(config), config.cluster_timeout_s)
            services.cluster = ClusterService(config, vms, bus, etcd)
            vms.ownership = services.cluster
            vms.cordon.on_change = services.cluster.changed
            vms.storage.on_change = services.cluster.changed
            services.migrations.locks = MigrationLocks(services.cluster)
            registry.forwarder = services.cluster.forward

        passed = systemd.listen_fds()
        sock = passed[0] if passed else bind_unix(config.socket, config.socket_group)
        watched = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        with trio.open_signal_receiver(*watched) as signals:
            async with trio.open_nursery() as root:
                await root.start(attach_hypervisor, services)
                await root.start(vms.storage.run)
                await root.start(services.migrations.run)
                await root.start(services.networks.run)
                if services.cluster is not None:
                    await root.start(services.cluster.run)
                events = LibvirtEvents(hv, bus, vms.managed.event_tenant)
                await root.start(events.run)
                await root.start(shaper.run)
                await root.start(keeper.run)
                server = UnixServer(
                    sock,
                    registry,
                    bus,
                    config.socket_group,
                    settings,
                    bindings,
                    services.connections,
                )
                await root.start(server.run)
                if tls is not None:
                    await root.start(tls.run)
                interval = systemd.watchdog_interval()
                if interval:
                    root.start_soon(systemd.watchdog, interval)
                gc.freeze()  # start-up objects leave the collector's scans: shorter pauses
                systemd.notify(f"READY=1\nSTATUS=serving on {config.socket}")
                log.info(
                    "daemon.ready",
                    extra=kv(
                        node=config.node_name,
                        socket=config.socket,
                        hypervisor=config.hypervisor_uri,
                        vms=len(vms.managed),
                        activated=bool(passed),
                    ),
                )
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        if tls is not None:
                            tls.reload()
                        continue
                    log.info("daemon.stopping", extra=kv(signal=signal.Signals(signum).name))
                    break
                systemd.notify("STOPPING=1")
                async with trio.open_nursery() as draining:
                    draining.start_soon(server.shutdown, config.shutdown_grace_s)
                    if tls is not None:
                        draining.start_soon(tls.shutdown, config.shutdown_grace_s)
                root.cancel_scope.cancel()
        if not passed:
            config.socket.unlink(missing_ok=True)
    finally:
        with trio.CancelScope(shield=True):
            if services.cluster is not None:
                await services.cluster.close()
            await trio.to_thread.run_sync(store.close)
            await trio.to_thread.run_sync(hv.close)
            if services.networks is not None:
                await trio.to_thread.run_sync(services.networks.close)
    log.info("daemon.stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="novacrond", description="NovaCron node daemon")
    parser.add_argument("--version", action="version", version=f"novacrond {__version__}")
    config_mod.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = config_mod.load(args)
    except ConfigError as exc:
        print(f"novacrond: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.setup(config.log_level, config.log_format)
    raise_fd_limit()
    try:
        trio.run(serve, config)
    except (Exception, BaseExceptionGroup) as failure:
        cause = expected_failure(failure)
        if cause is None:
            raise  # a bug: its traceback is what tells
        if isinstance(cause, SocketInUse):
            log.error("daemon.socket_in_use", extra=kv(detail=str(cause)))
            return 1
        if isinstance(cause, TlsConfigError):
            log.error("daemon.tls_unusable", extra=kv(error=str(cause)))
            print(f"novacrond: TLS configuration error: {cause}", file=sys.stderr)
            return 2
        if isinstance(cause, errors.NovaCronError):
            log.error("daemon.failed", extra=kv(code=cause.code, error=cause.message))
            print(f"novacrond: cannot start: {cause.code}: {cause.message}", file=sys.stderr)
            return 1
        log.error("daemon.failed", extra=kv(error=str(cause)))
        return 1
    return 0


def expected_failure(failure: BaseException) -> BaseException | None:
    """The first of a failed start's causes when each is one the daemon reports (the
    socket taken, TLS material unusable, a system or libvirt refusal), however deep in
    task groups; ``None`` when any is something else."""
    if isinstance(failure, BaseExceptionGroup):
        causes = [expected_failure(e) for e in failure.exceptions]
        if not causes or any(c is None for c in causes):
            return None
        return causes[0]
    expected = (SocketInUse, TlsConfigError, OSError, errors.NovaCronError)
    return failure if isinstance(failure, expected) else None


if __name__ == "__main__":
    sys.exit(main())
