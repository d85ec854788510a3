"""Fixtures for tests against the lab of real Debian 12 hosts.

Lab tests need root on a Debian-family machine. Locally without root they are
skipped with the reason; in CI (CI=true) a missing prerequisite is a failure,
so the real-host tests can never be skipped silently there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest

from chatmail_migrate.lab import Lab, SeedParams, seed_relay


def lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces, mounts, systemd-nspawn)"
    for tool in ("debootstrap", "systemd-nspawn", "ip", "ssh", "ssh-agent"):
        if not shutil.which(tool):
            return f"lab tests need {tool}: run the README's set-up command"
    return None


@pytest.fixture(scope="session")
def lab_available() -> None:
    reason = lab_unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must run the real-host tests)")
        pytest.skip(reason)


def _fresh(name: str) -> Lab:
    stale = Lab.load(name)
    if stale:
        stale.down(log=lambda *_: None)
    return Lab(name=name)


@pytest.fixture
def make_lab(lab_available) -> Iterator[Callable[..., Lab]]:
    """Bring up (and always take down) labs; ``make_lab(seed=SeedParams(...))``."""
    labs: list[Lab] = []

    def make(name: str = "cmtest", seed: SeedParams | None = None) -> Lab:
        lab = _fresh(name)
        labs.append(lab)
        lab.up(log=print)
        if seed is not None:
            print(seed_relay(lab, seed))
        return lab

    yield make
    for lab in labs:
        lab.down(log=print)


@pytest.fixture(scope="module")
def seeded_lab(lab_available) -> Iterator[Lab]:
    """One seeded relay lab shared by a module's read-only tests."""
    lab = _fresh("cmread")
    try:
        lab.up(log=print)
        seed_relay(lab, SeedParams(accounts=30, messages=8))
        yield lab
    finally:
        lab.down(log=print)
