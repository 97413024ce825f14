"""libvirt's errors as NovaCron's: the code a client acts on, libvirt's own message."""

from __future__ import annotations

import libvirt
import pytest

from novacron import errors
from novacron.vm.libvirt_errors import libvirt_errors, translate


def test_a_missing_domain_is_not_found_with_libvirts_message() -> None:
    conn = libvirt.open("test:///default")
    try:
        with (
            pytest.raises(errors.NotFound, match=r"^libvirt: Domain not found") as caught,
            libvirt_errors(),
        ):
            conn.lookupByName("no-such")
        assert caught.value.details == {"libvirt_code": libvirt.VIR_ERR_NO_DOMAIN}
    finally:
        conn.close()


def test_an_unmapped_code_is_internal() -> None:
    exc = libvirt.libvirtError("something odd")
    exc.err = (10_000, 0, "something odd", 2, None, None, None, 0, 0)
    got = translate(exc)
    assert isinstance(got, errors.Internal) and got.message == "libvirt: something odd"
