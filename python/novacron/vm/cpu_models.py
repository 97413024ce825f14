"""Whether the guest CPU ``[hypervisor] cpu_model`` names can run on this host, read
from libvirt's domain capabilities for the domain type the daemon uses.

libvirt lists, under ``<cpu>``, each mode with ``supported='yes'`` or ``'no'``
(``host-passthrough`` needs KVM; TCG has none), and under the ``custom`` mode every
named model with ``usable='yes'``, ``'no'`` (the host lacks some of its features) or
``'unknown'``. A model libvirt does not list at all is one QEMU does not know.

Checked once, when libvirt first answers: a model that cannot run here is logged and
shown by ``node.info``; starting a VM then fails with libvirt's own reason.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

MODES = ("host-model", "host-passthrough")


def problem(domain_caps: str, model: str) -> str | None:
    """Why the guest CPU ``model`` cannot run on a host whose domain capabilities are
    ``domain_caps``; None when it can, or when libvirt does not say."""
    if not model:
        return None
    cpu = ET.fromstring(domain_caps).find("cpu")  # noqa: S314 - from libvirtd
    if cpu is None:
        return None
    modes = {m.get("name"): m for m in cpu.findall("mode")}
    kind = model if model in MODES else "custom"
    mode = modes.get(kind)
    if mode is None:
        return None
    if mode.get("supported") != "yes":
        return f"libvirt cannot give this host's guests the CPU mode {kind}"
    if kind != "custom":
        return None
    usable = {m.text: m.get("usable") for m in mode.findall("model")}
    if model not in usable:
        known = ", ".join(sorted(name for name, ok in usable.items() if name and ok == "yes"))
        return f"QEMU knows no CPU model {model!r} (usable here: {known})"
    if usable[model] == "no":
        return f"this host's CPU lacks features of the CPU model {model!r}"
    return None
