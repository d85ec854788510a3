"""Fixtures for tests against the lab of real Debian 12 hosts.

Lab tests need root on a Debian-family machine. Locally without root they are
skipped with the reason; in CI (CI=true) a missing prerequisite is a failure,
so the real-host tests can never be skipped silently there.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chatmail_migrate.lab import Lab, SeedParams, seed_relay
from tests.helpers import BIN, OUR_PROGRAMS, lab_name


def pytest_sessionstart(session: pytest.Session) -> None:
    """Run our programs only from the project's environment, never from PATH.

    A test that found ``invoke`` on PATH passed wherever one happened to be installed
    system-wide and failed on a clean machine. So: refuse to start when the project's
    environment lacks one of them, and put a directory first on PATH whose same-named
    programs fail loudly, so a PATH lookup breaks here exactly as on a clean machine.
    """
    for name in OUR_PROGRAMS:
        program = BIN / name
        if not program.is_file():
            raise pytest.UsageError(f"{program} is missing: run ./bootstrap")
        first_line = program.read_bytes().split(b"\n", 1)[0].decode(errors="replace")
        if not first_line.startswith("#!") or Path(first_line[2:].split()[0]).parent != BIN:
            raise pytest.UsageError(
                f"{program} does not run {BIN}'s Python ({first_line!r}): rerun ./bootstrap"
            )
    trap = Path(tempfile.mkdtemp(prefix="chatmail-migrate-path-trap-"))
    for name in OUR_PROGRAMS:
        script = trap / name
        script.write_text(
            "#!/bin/sh\n"
            f"echo 'test error: {name} was looked up on PATH; run {BIN / name}' >&2\n"
            "exit 127\n"
        )
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.environ["PATH"] = f"{trap}{os.pathsep}{os.environ.get('PATH', '')}"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a grouped test that pytest-xdist's loadgroup did not group.

    Tests sharing a lab by a fixed name ("rehearse", a module's seeded lab) rely on
    ``xdist_group`` keeping them on one worker; with pytest 9.2 and pytest-xdist 3.8
    that silently stopped, and two workers tore down each other's lab.
    """
    grouped = getattr(item.config.option, "loadgroup", False)
    if grouped and item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
        pytest.fail(
            f"pytest-xdist did not group this test (pytest {pytest.__version__}): "
            "install the versions setup.cfg names (./bootstrap)",
            pytrace=False,
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``lab`` every test that boots lab hosts: all reach them through the
    ``lab_available`` fixture, so ``-m "not lab"`` selects the unit tests alone."""
    for item in items:
        if "lab_available" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.lab)


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


def _fresh(base: str) -> Lab:
    name = lab_name(base)
    stale = Lab.load(name)
    if stale:
        stale.down(log=lambda *_: None)
    return Lab(name=name)


@pytest.fixture
def make_lab(lab_available) -> Iterator[Callable[..., Lab]]:
    """Bring up (and always take down) labs; ``make_lab(seed=SeedParams(...))``."""
    labs: list[Lab] = []

    def make(name: str = "cmtest", seed: SeedParams | None = None, domain: str = "") -> Lab:
        lab = _fresh(name)
        if domain:
            lab.domain = domain
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
