"""The processes, cgroups and mounts of lab hosts: made at boot, ended at teardown.

Everything is found by what the state file recorded (pids, cgroup paths, the
overlay mount) and checked before it is ended: pids are reused, and other labs run
on the same machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from chatmail_migrate.lab import net
from chatmail_migrate.lab.lab_state import Host

CGROUP_ROOT = Path("/sys/fs/cgroup")


def make_cgroups(machine: str) -> list[str]:
    """One cgroup per host, so hosts do not share (and kill) each other's."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        bases = [CGROUP_ROOT]
    else:
        bases = [CGROUP_ROOT / h for h in ("systemd", "unified") if (CGROUP_ROOT / h).is_dir()]
    paths = []
    for base in bases:
        path = base / "chatmail-lab" / machine
        path.mkdir(parents=True, exist_ok=True)
        paths.append(str(path))
    return paths


def stop_host(host: Host) -> None:
    """End one host: its processes (in its network namespace and cgroups), its
    cgroups, its overlay mount and what nspawn left behind."""
    pids = set(net.netns_pids(host.netns)) if net.netns_exists(host.netns) else set()
    for cgroup in host.cgroups:
        pids.update(_cgroup_pids(Path(cgroup)))
    # Only this host's nspawn: a dead host's pid may now be another lab's nspawn
    # (a lab that failed half-way up, torn down while another boots), whose
    # death would end that other lab's host.
    if f" -M {host.machine} " in f" {cmdline(host.pid)} ":
        pids.add(host.pid)
    kill(sorted(pids))
    for cgroup in host.cgroups:
        _remove_cgroup(Path(cgroup))
        try:
            Path(cgroup).parent.rmdir()  # shared by labs: goes once the last one is down
        except OSError:
            pass
    if host.mounted or os.path.ismount(host.root):
        if subprocess.run(["umount", host.root], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", host.root], capture_output=True)
    for leftover in (
        Path("/run/systemd/nspawn/propagate") / host.machine,
        Path("/run/systemd/nspawn/locks") / f"machine-{host.machine}",
        *([Path("/run/systemd/nspawn/locks") / host.root_lock] if host.root_lock else []),
    ):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def cmdline(pid: int | None) -> str:
    """What ``pid`` runs, as one line ("" when it is gone): to tell whose pid it is now."""
    if not pid:
        return ""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int | None) -> bool:
    """Whether ``pid`` runs (a zombie does not: nobody may have reaped it yet)."""
    if not pid:
        return False
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _cgroup_pids(path: Path) -> set[int]:
    pids: set[int] = set()
    if not path.is_dir():
        return pids
    # os.walk, not Path.rglob: cgroups vanish while they are walked (a host's
    # systemd removing its own), and rglob raises on a directory gone mid-walk.
    for directory, _, files in os.walk(path):
        if "cgroup.procs" in files:
            try:
                pids.update(int(p) for p in Path(directory, "cgroup.procs").read_text().split())
            except (OSError, ValueError):
                pass
    return pids


def kill(pids: list[int], timeout: float = 10) -> None:
    """SIGKILL ``pids`` and wait (at most ``timeout``) until they are gone."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def _remove_cgroup(path: Path) -> None:
    if not path.is_dir():
        return
    subs = [Path(d) for d, _, _ in os.walk(path, topdown=False) if Path(d) != path]
    for sub in subs:  # deepest first
        for _ in range(50):
            try:
                sub.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)
    try:
        path.rmdir()
    except OSError:
        pass
