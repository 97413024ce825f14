"""NovaCron: a per-host VM management daemon (libvirt, netlink, MessagePack-RPC)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
