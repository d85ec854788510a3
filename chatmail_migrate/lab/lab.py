"""A lab of Debian 12 hosts booted with systemd-nspawn, reachable over SSH.

Every resource the lab creates (overlay mounts, cgroups, namespaces, links,
processes) is recorded in a state file as soon as it exists, so ``down`` can
remove exactly those, even after an ``up`` that failed half-way.

``Lab`` is put together from the parts of the lab, one module each: its record and
files (``lab_state.py``), booting hosts (``lab_boot.py``), the networks operators
have (``lab_networks.py``) and the relay checkout (``lab_relay_checkout.py``); the
processes and mounts it ends are found by ``lab_processes.py``. Here: ``up``,
``down`` and ``status``, the lab's life, which use all of them.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import time

from chatmail_migrate.lab import net
from chatmail_migrate.lab.lab_boot import LabBoot
from chatmail_migrate.lab.lab_networks import LabNetworks
from chatmail_migrate.lab.lab_processes import alive, cmdline, kill, stop_host
from chatmail_migrate.lab.lab_relay_checkout import LabRelayCheckout
from chatmail_migrate.lab.lab_state import HOST_NAMES, state_root
from chatmail_migrate.lab.rootfs import LabError, ensure_rootfs

__all__ = ["Lab"]


# A dataclass through LabState: its fields, __init__ and the state file are there.
class Lab(LabBoot, LabNetworks, LabRelayCheckout):
    # -- up ---------------------------------------------------------------
    def up(self, log=print) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9]{0,7}", self.name):
            raise LabError(f"lab name {self.name!r} must be 1-8 lower-case letters/digits")
        if os.geteuid() != 0:
            raise LabError(
                "the lab needs root (network namespaces, mounts, nspawn); run it as root"
            )
        if (self.dir / "state.json").exists():
            raise LabError(
                f"lab {self.name} already exists in {self.dir}; run `invoke lab.down` first"
            )
        if net.link_exists(f"{self.name}br"):
            raise LabError(
                f"a network link {self.name}br already exists; another lab is named {self.name}?"
            )
        started = time.monotonic()
        rootfs = ensure_rootfs(log)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.save()
            self._start_agent()
            # Labs coming up side by side must not pick the same free subnet.
            with open(state_root() / ".subnet.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                subnet = net.free_subnet()
                subnet6 = net.ula_subnet(subnet)
                self.subnet, self.subnet6 = str(subnet), str(subnet6)
                self.bridge = f"{self.name}br"
                self.save()
                hosts_ip = list(subnet.hosts())
                net.add_bridge(
                    self.bridge,
                    f"{hosts_ip[-1]}/{subnet.prefixlen}",
                    f"{subnet6[254]}/{subnet6.prefixlen}",
                )
            for index, hostname in enumerate(HOST_NAMES):
                address6 = str(subnet6[index + 1])
                self._boot_host(hostname, f"{hosts_ip[index]}", subnet.prefixlen, rootfs, address6)
            self._write_ssh_files()
            self._write_relay_dir()
            for hostname in HOST_NAMES:
                self._wait_ready(hostname)
        except BaseException:
            self.down(log=lambda *_: None)
            raise
        log(
            f"lab {self.name}: {', '.join(f'{h.name}={h.address}' for h in self.hosts.values())} "
            f"up in {time.monotonic() - started:.1f}s"
        )

    # -- down -------------------------------------------------------------
    def down(self, log=print) -> None:
        for host in self.hosts.values():
            stop_host(host)
        # By pid, and only if that pid is still this lab's agent: pids are reused.
        agent = cmdline(self.agent_pid)
        if self.agent_pid and agent.startswith("ssh-agent") and str(self.agent_sock) in agent:
            kill([self.agent_pid])
        for host in self.hosts.values():
            net.remove_host_link(host.netns, host.veth)
        if self.bridge:
            net.remove_bridge(self.bridge)
        shutil.rmtree(self.dir, ignore_errors=True)
        log(f"lab {self.name}: down")

    # -- status -----------------------------------------------------------
    def status(self) -> dict[str, str]:
        result = {}
        for host in self.hosts.values():
            if not alive(host.pid):
                result[host.name] = "stopped"
                continue
            probe = self.ssh(host.name, "systemctl is-system-running", check=False, timeout=10)
            result[host.name] = probe.stdout.strip() or f"unreachable ({probe.stderr.strip()})"
        return result
