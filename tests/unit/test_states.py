from __future__ import annotations

import libvirt

from novacron.vm import states


def test_states_and_reasons_follow_libvirt_numbers() -> None:
    assert states.state_name(libvirt.VIR_DOMAIN_RUNNING) == "running"
    assert states.state_name(libvirt.VIR_DOMAIN_SHUTOFF) == "stopped"
    assert states.state_name(99) == "unknown"
    assert states.reason_name(libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER) == "user"
    shut = libvirt.VIR_DOMAIN_SHUTOFF
    assert states.reason_name(shut, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED) == "destroyed"
    assert states.reason_name(shut, 999) == "unknown"


def test_events() -> None:
    started = libvirt.VIR_DOMAIN_EVENT_STARTED
    assert states.event_names(started, libvirt.VIR_DOMAIN_EVENT_STARTED_BOOTED) == (
        "running",
        "booted",
    )
    stopped = libvirt.VIR_DOMAIN_EVENT_STOPPED
    assert states.event_names(stopped, libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED) == (
        "stopped",
        "destroyed",
    )
    assert states.event_names(77, 0) == ("unknown", "unknown")
