"""libvirt's errors as NovaCron's: an error code a client can act on, libvirt's message."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import libvirt

from novacron import errors

_CODE_MAP: dict[int, type[errors.NovaCronError]] = {
    libvirt.VIR_ERR_NO_DOMAIN: errors.NotFound,
    libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT: errors.NotFound,
    libvirt.VIR_ERR_NO_STORAGE_POOL: errors.NotFound,
    libvirt.VIR_ERR_NO_STORAGE_VOL: errors.NotFound,
    libvirt.VIR_ERR_DOM_EXIST: errors.AlreadyExists,
    libvirt.VIR_ERR_STORAGE_VOL_EXIST: errors.AlreadyExists,
    libvirt.VIR_ERR_OPERATION_INVALID: errors.Conflict,
    libvirt.VIR_ERR_OPERATION_UNSUPPORTED: errors.Conflict,
    libvirt.VIR_ERR_NO_SUPPORT: errors.Conflict,
    libvirt.VIR_ERR_CONFIG_UNSUPPORTED: errors.InvalidParams,
    libvirt.VIR_ERR_XML_ERROR: errors.InvalidParams,
    libvirt.VIR_ERR_XML_DETAIL: errors.InvalidParams,
    libvirt.VIR_ERR_INVALID_ARG: errors.InvalidParams,
    libvirt.VIR_ERR_OPERATION_TIMEOUT: errors.Timeout,
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE: errors.Timeout,
    libvirt.VIR_ERR_NO_CONNECT: errors.Unavailable,
    libvirt.VIR_ERR_SYSTEM_ERROR: errors.Unavailable,
    libvirt.VIR_ERR_RPC: errors.Unavailable,
    libvirt.VIR_ERR_OPERATION_FAILED: errors.Conflict,
}


def translate(exc: libvirt.libvirtError) -> errors.NovaCronError:
    code = exc.get_error_code()
    cls = _CODE_MAP.get(code, errors.Internal)
    message = exc.get_error_message() or str(exc)
    return cls(f"libvirt: {message}", {"libvirt_code": code})


@contextmanager
def libvirt_errors() -> Iterator[None]:
    try:
        yield
    except libvirt.libvirtError as exc:
        raise translate(exc) from None
