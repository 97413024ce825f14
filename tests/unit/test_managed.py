from __future__ import annotations

from novacron.vm.managed import ManagedVms


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_managed_vm_has_its_tenant_and_others_have_none() -> None:
    vms = ManagedVms()
    vms.add("a1", "acme")
    assert "a1" in vms and len(vms) == 1 and list(vms) == ["a1"]
    assert vms.tenant_of("a1") == "acme" and vms.event_tenant("a1") == "acme"
    assert "other" not in vms and vms.tenant_of("other") is None
    assert vms.event_tenant("other") is None


def test_a_dropped_vm_keeps_its_tenant_for_late_events_until_the_linger_ends() -> None:
    clock = Clock()
    vms = ManagedVms(linger_s=30, clock=clock)
    vms.add("a1", "acme")
    vms.discard("a1")
    assert "a1" not in vms and len(vms) == 0 and vms.tenant_of("a1") is None
    clock.now += 29.9
    assert vms.event_tenant("a1") == "acme"
    clock.now += 0.1
    assert vms.event_tenant("a1") is None
    vms.discard("a1")  # dropping an unmanaged name remembers nothing
    assert vms.event_tenant("a1") is None


def test_a_name_managed_again_takes_its_new_tenant_at_once() -> None:
    clock = Clock()
    vms = ManagedVms(clock=clock)
    vms.add("web", "acme")
    vms.discard("web")
    vms.add("web", "globex")
    assert vms.event_tenant("web") == "globex"
    vms.discard("web")  # the new owner's late events are the new owner's
    assert vms.event_tenant("web") == "globex"


def test_only_the_newest_dropped_names_are_remembered() -> None:
    clock = Clock()
    vms = ManagedVms(linger_max=2, clock=clock)
    for name in ("a", "b", "c"):
        vms.add(name, "t-" + name)
        vms.discard(name)
        clock.now += 1
    assert vms.event_tenant("a") is None
    assert vms.event_tenant("b") == "t-b" and vms.event_tenant("c") == "t-c"


def test_expiry_follows_the_order_names_were_dropped() -> None:
    clock = Clock()
    vms = ManagedVms(linger_s=10, clock=clock)
    vms.add("old", "t1")
    vms.discard("old")
    clock.now += 5
    vms.add("new", "t2")
    vms.discard("new")
    clock.now += 6  # "old" has expired, "new" has not
    assert vms.event_tenant("old") is None and vms.event_tenant("new") == "t2"
