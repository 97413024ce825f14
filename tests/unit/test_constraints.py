"""constraints.txt pins every Python package the project names, at a version its
pyproject.toml allows, and the suite runs on those versions."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def pins(text: str) -> dict[str, Version]:
    """The `name==version` lines of a constraints file (comments and blank lines
    skipped); anything else, or a package pinned twice, is an error."""
    out: dict[str, Version] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or req.marker or req.extras:
            raise ValueError(f"line {number}: {line!r} is not an exact pin")
        name = canonicalize_name(req.name)
        if name in out:
            raise ValueError(f"line {number}: {req.name} pinned twice")
        out[name] = Version(specs[0].version)
    return out


def declared(build: bool = True) -> list[Requirement]:
    """The requirements of pyproject.toml: the runtime's and the extras', and the build
    system's with `build`."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = list(project["build-system"]["requires"]) if build else []
    names += project["project"]["dependencies"]
    for extra in project["project"].get("optional-dependencies", {}).values():
        names += extra
    return [Requirement(n) for n in names]


PINS = pins((ROOT / "constraints.txt").read_text())


def test_pins_reads_exact_pins_only() -> None:
    assert pins("# c\n\nA_b==1.0  # why\npip==26.3\n") == {
        "a-b": Version("1.0"),
        "pip": Version("26.3"),
    }
    for bad in ("a>=1", "a", "a==1,<2", "a[x]==1", "a==1; python_version<'4'", "a==1\nA==2"):
        with pytest.raises(ValueError, match="line"):
            pins(bad)


@pytest.mark.parametrize("req", declared(), ids=str)
def test_every_requirement_is_pinned_within_its_range(req: Requirement) -> None:
    name = canonicalize_name(req.name)
    assert name in PINS, f"{req.name} is not pinned in constraints.txt"
    assert req.specifier.contains(PINS[name], prereleases=True), (
        f"constraints.txt pins {req.name}=={PINS[name]}, outside pyproject's {req.specifier}"
    )


def test_pip_is_pinned() -> None:
    assert "pip" in PINS


def test_the_suite_runs_on_the_pinned_versions() -> None:
    """bootstrap.sh installed with the constraints (maturin lives in pip's build
    environment, not here)."""
    installed: dict[str, str] = {
        canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()
    }
    wrong = {
        name: (installed[name], str(version))
        for name, version in PINS.items()
        if name in installed and Version(installed[name]) != version
    }
    assert wrong == {}, "installed (version, pinned) differ"
    missing = sorted(
        r.name for r in declared(build=False) if canonicalize_name(r.name) not in installed
    )
    assert missing == []
