"""Shared test configuration: hypothesis profiles chosen by $HYPOTHESIS_PROFILE, and how
the system tests share pytest-xdist's workers (:mod:`tests.xdist_system`)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests import xdist_system
from tests.system.libvirt_host import LibvirtHost

settings.register_profile("fast", max_examples=60, deadline=None)
settings.register_profile(
    "ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "slow", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))


_LIBVIRTD = pytest.StashKey[LibvirtHost | None]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_LIBVIRTD] = xdist_system.start_libvirtd(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    host = config.stash.get(_LIBVIRTD, None)
    if host is not None:
        host.stop()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """System tests share two workers as :mod:`tests.xdist_system` says."""
    if config.getvalue("dist") != "loadgroup":
        return None
    return xdist_system.make_scheduler(config, log)
