"""Shaping a VM NIC's tap to its limits (``vm.nic.limit``), as the kernel enforces them.

Traffic **to** the guest leaves the host through the tap (the tap's egress): a token
bucket (``tbf``) as the tap's root queueing discipline holds it to
``inbound_bytes_per_s``. Traffic **from** the guest enters the host through the tap
(its ingress), where no queue can hold it back: an ``ingress`` discipline on the tap
with a match-all ``u32`` filter redirects it (``mirred``) to an intermediate functional
block device (``ifb``) of NovaCron's, whose root token bucket holds it to
``outbound_bytes_per_s``; from there it goes on into the bridge. libvirt's own
``<bandwidth>`` is not used: it needs ``sch_sfq`` and police actions, which the
kernels this project runs on lack (``docs/networking.md``).

A bucket lets a burst of ``rate / 25`` bytes (40 ms at the rate; at least 32 KiB) pass
at once, and holds what waits in it for at most 50 ms, then drops it (TCP then slows to
the rate).

The IFB of the tap with interface index N is named ``ncqN`` and carries the interface
alias ``novacron:shape:<tap>``: :func:`sweep` deletes those whose tap is gone (libvirt
removes a VM's taps when it stops). Only a tap's root and ingress disciplines are
touched, and only on taps of VMs with limits or that had some.

Everything here is blocking pyroute2 on the network service's command socket (one call
at a time, on its worker thread).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from novacron import errors
from novacron.logs import kv
from novacron.net.nic import NicLimits

log = logging.getLogger("novacron.net.shaping")

IFB_PREFIX = "ncq"
ALIAS_PREFIX = "novacron:shape:"
LATENCY_US = 50_000
MIN_BURST = 32 * 1024
ROOT = 0xFFFFFFFF  # TC_H_ROOT
INGRESS_PARENT = 0xFFFFFFF1  # TC_H_INGRESS: where an ingress discipline hangs
INGRESS_HANDLE = 0xFFFF0000  # ffff:
BUCKET_HANDLE = 0x10000  # 1:
ETH_P_ALL = 0x0003
FILTER_PRIO = 10


@dataclass(frozen=True)
class Shape:
    """A tap's limits as the kernel has them (0: none)."""

    inbound: int = 0
    outbound: int = 0


def burst(rate: int) -> int:
    """The bucket's size for ``rate`` bytes a second."""
    return max(rate // 25, MIN_BURST)


def ifb_name(tap_index: int) -> str:
    return f"{IFB_PREFIX}{tap_index}"


def _index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def _bucket_rate(qdiscs: list[Any]) -> int:
    """The rate of the root token bucket among a link's ``qdiscs`` (0: none)."""
    for q in qdiscs:
        if q["parent"] == ROOT and q.get_attr("TCA_KIND") == "tbf":
            parms = q.get_nested("TCA_OPTIONS", "TCA_TBF_PARMS")
            return int(parms["rate"]) if parms else 0
    return 0


@dataclass(frozen=True)
class _Seen:
    """What the kernel has for a tap, read once per shaping."""

    index: int
    ifb: int | None  # its IFB's index, if there is one
    redirects: bool  # its ingress discipline and a filter under it
    shape: Shape


def _look(ipr: Any, tap: str) -> _Seen:
    index = _index(ipr, tap)
    if index is None:
        raise errors.NotFound(f"interface {tap!r} not found", {"device": tap})
    qdiscs = list(ipr.get_qdiscs(index=index))
    redirects = any(
        q["parent"] == INGRESS_PARENT and q.get_attr("TCA_KIND") == "ingress" for q in qdiscs
    ) and any(
        f.get_attr("TCA_KIND") == "u32" for f in ipr.get_filters(index=index, parent=INGRESS_HANDLE)
    )
    ifb = _index(ipr, ifb_name(index))
    outbound = 0
    if ifb is not None and redirects:
        outbound = _bucket_rate(list(ipr.get_qdiscs(index=ifb)))
    return _Seen(index, ifb, redirects, Shape(inbound=_bucket_rate(qdiscs), outbound=outbound))


def state(ipr: Any, tap: str) -> Shape:
    """The limits tap ``tap`` is shaped to now (NotFound if there is no such tap)."""
    return _look(ipr, tap).shape


def _put_bucket(ipr: Any, index: int, rate: int) -> None:
    ipr.tc("replace", "tbf", index, BUCKET_HANDLE, rate=rate, burst=burst(rate), latency=LATENCY_US)


def _drop_root(ipr: Any, index: int) -> None:
    """Deletes link ``index``'s root discipline, whatever its handle (the kernel puts its
    default back)."""
    try:
        ipr.tc("del", index=index, parent=ROOT)
    except NetlinkError as exc:
        if exc.code != 2:  # ENOENT: none there
            raise


def _drop_ingress(ipr: Any, index: int) -> None:
    try:
        ipr.tc("del", index=index, handle=INGRESS_HANDLE, parent=INGRESS_PARENT)
    except NetlinkError as exc:
        if exc.code not in (2, 22):  # none there (ENOENT; EINVAL on some kernels)
            raise


def _make_ifb(ipr: Any, tap: str, index: int) -> int:
    """Makes the tap's IFB, up and marked; its index."""
    name = ifb_name(index)
    ipr.link("add", ifname=name, kind="ifb")
    made = _index(ipr, name)
    assert made is not None, name
    ipr.link("set", index=made, ifalias=ALIAS_PREFIX + tap, state="up")
    return made


def shape(ipr: Any, tap: str, limits: NicLimits | None) -> list[str]:
    """Shapes ``tap`` to ``limits`` (None: none); returns what it changed (``inbound``,
    ``outbound``). NotFound if the tap is gone; other refusals of the kernel as
    ``internal`` errors naming the tap."""
    want = limits or NicLimits()
    try:
        return _shape(ipr, tap, want)
    except NetlinkError as exc:
        raise errors.Internal(
            f"shaping {tap} failed: {exc}", {"device": tap, "errno": exc.code}
        ) from exc


def _shape(ipr: Any, tap: str, want: NicLimits) -> list[str]:
    seen = _look(ipr, tap)
    index, now = seen.index, seen.shape
    changed = []
    if now.inbound != want.inbound_bytes_per_s:
        if want.inbound_bytes_per_s:
            _put_bucket(ipr, index, want.inbound_bytes_per_s)
        else:
            _drop_root(ipr, index)
        changed.append("inbound")
    if now.outbound != want.outbound_bytes_per_s:
        if want.outbound_bytes_per_s:
            ifb = seen.ifb if seen.ifb is not None else _make_ifb(ipr, tap, index)
            _put_bucket(ipr, ifb, want.outbound_bytes_per_s)
            if seen.ifb is None or not seen.redirects:
                # (a new IFB has a new index: a redirect to an older one must go)
                _drop_ingress(ipr, index)
                ipr.tc("add", "ingress", index, INGRESS_HANDLE)
                ipr.tc(
                    "add-filter",
                    "u32",
                    index,
                    parent=INGRESS_HANDLE,
                    protocol=ETH_P_ALL,
                    prio=FILTER_PRIO,
                    target=0x1,
                    keys=["0x0/0x0+0"],
                    action=[_redirect_to(ifb)],
                )
        else:
            _drop_ingress(ipr, index)
            if seen.ifb is not None:
                ipr.link("del", index=seen.ifb)
        changed.append("outbound")
    return changed


def _redirect_to(ifb: int) -> dict[str, Any]:
    """A ``mirred`` action that sends what the filter matches out of link ``ifb``."""
    return {"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": ifb}


def sweep(ipr: Any) -> list[str]:
    """Deletes NovaCron's IFBs whose tap is gone; returns their names."""
    links = list(ipr.get_links())
    names = {int(m["index"]): m.get_attr("IFLA_IFNAME") for m in links}
    gone = []
    for m in links:
        alias = m.get_attr("IFLA_IFALIAS") or ""
        name = m.get_attr("IFLA_IFNAME") or ""
        if not alias.startswith(ALIAS_PREFIX) or not name.startswith(IFB_PREFIX):
            continue
        tap = alias[len(ALIAS_PREFIX) :]
        suffix = name[len(IFB_PREFIX) :]
        if suffix.isdigit() and names.get(int(suffix)) == tap:
            continue
        try:
            ipr.link("del", index=int(m["index"]))
        except NetlinkError as exc:
            log.warning("net.shape_sweep_failed", extra=kv(device=name, error=str(exc)))
            continue
        gone.append(name)
    return gone
