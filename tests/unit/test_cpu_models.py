"""Whether a configured guest CPU can run, read from domain capabilities shaped as
libvirt 9.0's qemu driver writes them for TCG (the system tests ask a real libvirtd)."""

from __future__ import annotations

import re

import pytest

from novacron.vm import cpu_models

TCG = """<domainCapabilities>
  <path>/usr/bin/qemu-system-x86_64</path>
  <domain>qemu</domain>
  <cpu>
    <mode name='host-passthrough' supported='no'/>
    <mode name='maximum' supported='yes'/>
    <mode name='host-model' supported='yes'>
      <model fallback='forbid'>EPYC</model>
      <vendor>AMD</vendor>
      <feature policy='require' name='acpi'/>
    </mode>
    <mode name='custom' supported='yes'>
      <model usable='yes' vendor='unknown'>qemu64</model>
      <model usable='yes' vendor='Intel'>Nehalem</model>
      <model usable='no' vendor='Intel'>Skylake-Server</model>
      <model usable='unknown' vendor='Intel'>Cascadelake-Server</model>
    </mode>
  </cpu>
</domainCapabilities>"""


@pytest.mark.parametrize(
    ("model", "why"),
    [
        ("", None),
        ("host-model", None),
        ("qemu64", None),
        ("Nehalem", None),
        ("Cascadelake-Server", None),  # libvirt does not know: left to the start
        ("host-passthrough", "cannot give this host's guests the CPU mode host-passthrough"),
        ("Skylake-Server", "lacks features of the CPU model 'Skylake-Server'"),
        ("Haswel", "knows no CPU model 'Haswel' \\(usable here: Nehalem, qemu64\\)"),
    ],
)
def test_a_model_runs_or_says_why_not(model: str, why: str | None) -> None:
    found = cpu_models.problem(TCG, model)
    if why is None:
        assert found is None
    else:
        assert found is not None and re.search(why, found), found


def test_capabilities_without_a_cpu_say_nothing() -> None:
    bare = "<domainCapabilities><domain>qemu</domain></domainCapabilities>"
    assert cpu_models.problem(bare, "host-model") is None
    no_custom = TCG.replace("name='custom'", "name='other'")
    assert cpu_models.problem(no_custom, "Nehalem") is None
