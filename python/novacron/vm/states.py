"""libvirt's numeric domain states, reasons and lifecycle events as NovaCron names."""

from __future__ import annotations

STATES = {
    0: "unknown",
    1: "running",
    2: "running",  # blocked on a resource: still running for an operator
    3: "paused",
    4: "shutting_down",
    5: "stopped",
    6: "crashed",
    7: "suspended",  # guest power-management suspend
}

REASONS: dict[int, tuple[str, ...]] = {
    0: ("unknown",),
    1: (
        "unknown",
        "booted",
        "migrated",
        "restored",
        "from_snapshot",
        "unpaused",
        "migration_canceled",
        "save_canceled",
        "wakeup",
        "crashed",
        "postcopy",
        "postcopy_failed",
    ),
    2: ("unknown",),
    3: (
        "unknown",
        "user",
        "migration",
        "save",
        "dump",
        "ioerror",
        "watchdog",
        "from_snapshot",
        "shutting_down",
        "snapshot",
        "crashed",
        "starting_up",
        "postcopy",
        "postcopy_failed",
        "api_error",
    ),
    4: ("unknown", "user"),
    5: (
        "unknown",
        "shutdown",
        "destroyed",
        "crashed",
        "migrated",
        "saved",
        "failed",
        "from_snapshot",
        "daemon",
    ),
    6: ("unknown", "panicked"),
    7: ("unknown",),
}

# lifecycle event -> (state after the event, names of its details)
EVENTS: dict[int, tuple[str, tuple[str, ...]]] = {
    0: ("defined", ("added", "updated", "renamed", "from_snapshot")),
    1: ("undefined", ("removed", "renamed")),
    2: ("running", ("booted", "migrated", "restored", "from_snapshot", "wakeup")),
    3: (
        "paused",
        (
            "paused",
            "migrated",
            "ioerror",
            "watchdog",
            "restored",
            "from_snapshot",
            "api_error",
            "postcopy",
            "postcopy_failed",
        ),
    ),
    4: ("running", ("unpaused", "migrated", "from_snapshot", "postcopy")),
    5: (
        "stopped",
        ("shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from_snapshot"),
    ),
    6: ("shutting_down", ("finished", "guest", "host")),
    7: ("suspended", ("memory", "disk")),
    8: ("crashed", ("panicked", "crashloaded")),
}


def state_name(state: int) -> str:
    return STATES.get(state, "unknown")


def reason_name(state: int, reason: int) -> str:
    names = REASONS.get(state, ())
    return names[reason] if 0 <= reason < len(names) else "unknown"


def named(state: int, reason: int) -> tuple[str, str]:
    """A domain's state and the reason for it (libvirt's numbers), by name."""
    return state_name(state), reason_name(state, reason)


def event_names(event: int, detail: int) -> tuple[str, str]:
    """(state, reason) for a lifecycle event and its detail."""
    state, details = EVENTS.get(event, ("unknown", ()))
    reason = details[detail] if 0 <= detail < len(details) else "unknown"
    return state, reason
