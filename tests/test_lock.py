"""The lock (requirements-lock.txt) is complete, exact and agrees with pyproject.toml; `make install` installs it.

`make install` installs the lock with --no-deps, so a dependency missing from the lock would be missing
from the environment, and a range in it would resolve to whatever is newest that day.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tunelab.models.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements-lock.txt"
WEIGHT_PACKAGES = {canonicalize_name(p) for model in REGISTRY.values() for p in model.packages}
"""Installed with --no-deps on purpose: their own dependencies (sentence-transformers, llama.cpp) are not needed."""


def locked() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for number, line in enumerate(LOCK.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", (
            f"{LOCK.name}:{number}: '{line}' is not name==version"
        )
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{LOCK.name}:{number}: {name} is pinned twice"
        pins[name] = Version(specifiers[0].version)
    return pins


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in project["dependencies"] + extras["test"] + extras["tracking"]]


def test_every_project_requirement_is_locked_within_its_range():
    pins = locked()
    for requirement in project_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in {LOCK.name}; run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{LOCK.name} pins {name}=={pins[name]}, outside pyproject.toml's '{requirement}'; run `make lock`"
        )


def test_the_model_weight_packages_are_locked():
    assert WEIGHT_PACKAGES <= set(locked())


def test_the_lock_holds_every_dependency_of_what_it_locks():
    """Closure: each locked, installed distribution's own requirements are locked too (their extras aside)."""
    pins = locked()
    missing = []
    for name in pins:
        if name in WEIGHT_PACKAGES:
            continue
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue  # not installed here: checked in the environment `make install` builds
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            dependency = canonicalize_name(requirement.name)
            if dependency not in pins:
                missing.append(f"{name} needs {requirement}")
            elif not requirement.specifier.contains(pins[dependency], prereleases=True):
                missing.append(f"{name} needs {requirement}, the lock has {pins[dependency]}")
    assert not missing, "\n".join(missing)


@pytest.mark.skipif(
    Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(),
    reason="checks the environment `make install` builds (.venv); this is another one",
)
def test_make_install_installed_exactly_the_lock():
    # The first distribution of each name on sys.path is the one imported: importing setuptools (torch's inductor
    # does, for compiled tests in the same worker) appends setuptools/_vendor, with older packaging and zipp
    installed: dict[str, Version] = {}
    for distribution in metadata.distributions():
        installed.setdefault(canonicalize_name(distribution.metadata["Name"]), Version(distribution.version))
    wrong = {
        name: (version, installed.get(name)) for name, version in locked().items() if installed.get(name) != version
    }
    assert not wrong, f"locked vs installed: {wrong}; run `make install`"
