"""Peak memory of what the tool runs on each lab host, read from outside.

The lab's hosts are nspawn containers on this machine, so their processes are in
this machine's /proc, each in its host's cgroup (``/chatmail-lab/LAB-HOST/payload``).
What the tool runs on a host lives in its ssh sessions (``ssh.service`` in the lab,
which runs no logind; ``user.slice`` where it does) and in the
units it starts there (``chatmail-migrate-*``, the copy's); the relay's own services
do not count. A sampler thread reads them every ``interval`` s: each process's own
peak (``VmHWM``, kept by the kernel, so a process seen once reports its peak up to
then) and the sum of what runs at once (``VmRSS``). A process that starts and ends
between two samples is missed: such processes are short shell commands.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

# The lab's churn (the relay's last mail, made by the benchmark) and sshd's listener
# are not the tool's; the sshd of each of its sessions is.
NOT_THE_TOOL = ("churn-seconds", "[listener]")


def _kib(status: str, field: str) -> int:
    for line in status.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _host_of(cgroup: str, prefixes: dict[str, str]) -> str | None:
    path = next((line[3:] for line in cgroup.splitlines() if line.startswith("0::")), "")
    for host, prefix in prefixes.items():
        if path.startswith(prefix) and (
            "/user.slice/" in path
            or "/system.slice/ssh.service" in path
            or "/system.slice/chatmail-migrate-" in path
        ):
            return host
    return None


class HelperMemory:
    def __init__(self, lab_name: str, hosts: tuple[str, ...], interval: float = 0.2) -> None:
        self.prefixes = {h: f"/chatmail-lab/{lab_name}-{h}/payload/" for h in hosts}
        self.interval = interval
        self.owner: dict[int, str | None] = {}
        self.command: dict[int, str] = {}
        self.peak_kib = dict.fromkeys(hosts, 0)
        self.largest: dict[str, tuple[int, str]] = {h: (0, "") for h in hosts}
        self._stop = threading.Event()

    def _sample(self) -> None:
        now = dict.fromkeys(self.peak_kib, 0)
        alive = set()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            alive.add(pid)
            try:
                if pid not in self.owner:
                    cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ")
                    text = cmdline.decode(errors="replace").strip()
                    host = _host_of(Path(entry.path, "cgroup").read_text(), self.prefixes)
                    if any(mark in text for mark in NOT_THE_TOOL):
                        host = None
                    self.owner[pid] = host
                    self.command[pid] = text[:90]
                host = self.owner[pid]
                if host is None:
                    continue
                status = Path(entry.path, "status").read_text()
            except OSError:
                continue
            now[host] += _kib(status, "VmRSS")
            hwm = _kib(status, "VmHWM")
            if hwm > self.largest[host][0]:
                self.largest[host] = (hwm, self.command.get(pid, ""))
        for host, kib in now.items():
            self.peak_kib[host] = max(self.peak_kib[host], kib)
        # A pid that ended may come back as another process: forget the gone ones.
        for pid in set(self.owner) - alive:
            del self.owner[pid]
            self.command.pop(pid, None)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def report(self) -> dict:
        return {
            host: {
                "peak_kib": self.peak_kib[host],
                "largest_kib": self.largest[host][0],
                "largest": self.largest[host][1],
            }
            for host in self.peak_kib
        }


@contextlib.contextmanager
def helpers_memory(lab_name: str, hosts: tuple[str, ...] = ("old", "new")):
    """Yield a dict that holds, after the block, each host's helpers' peak memory."""
    sampler = HelperMemory(lab_name, hosts)
    found: dict = {}
    thread = threading.Thread(target=sampler._loop, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        sampler._stop.set()
        thread.join()
        sampler._sample()
        found.update(sampler.report())
