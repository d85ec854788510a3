"""The networks operators have, made on lab hosts: more addresses (other subnets,
IPv6, deprecated ones), a Docker-like bridge, sshd on another port or behind a jump
host. ``net.py`` makes the lab's own network; this changes a booted host's.
"""

from __future__ import annotations

import ipaddress
import shlex
import time

from chatmail_migrate.lab import net
from chatmail_migrate.lab.lab_state import LabState
from chatmail_migrate.lab.rootfs import LabError


class LabNetworks(LabState):
    """A part of ``Lab``, methods only (the fields are ``LabState``'s)."""

    def add_address(self, host: str, address: str, dev: str = "eth0", *flags: str) -> None:
        """Give ``host`` another address (``ADDR/PREFIX``; ``flags`` as ``ip address add``
        takes them, e.g. ``preferred_lft 0`` for a deprecated one).

        An address outside the lab's subnets gets a host route onto the lab's bridge
        first, so whatever is sent to it reaches this lab host and nothing beyond.
        """
        ip = ipaddress.ip_interface(address).ip
        inside = any(ip in ipaddress.ip_network(n) for n in (self.subnet, self.subnet6) if n)
        if not inside and dev == "eth0":
            net.ip("route", "replace", f"{ip}/{ip.max_prefixlen}", "dev", self.bridge)
        nodad = ["nodad"] if ip.version == 6 else []
        net.ip("-n", self.hosts[host].netns, "address", "add", address, "dev", dev, *nodad, *flags)

    def add_guest_bridge(self, host: str, name: str, address: str) -> None:
        """A bridge inside ``host`` as Docker or libvirt make one (docker0, 172.17.0.1/16)."""
        netns = self.hosts[host].netns
        net.ip("-n", netns, "link", "add", name, "type", "bridge")
        net.ip("-n", netns, "address", "add", address, "dev", name)
        net.ip("-n", netns, "link", "set", name, "up")

    def move_ssh(
        self, host: str, port: int = 22, *, allow_from: tuple[str, ...] = (), jump: str = ""
    ) -> None:
        """Make ``host``'s sshd listen on ``port`` only and, with ``allow_from``, accept
        logins from those addresses only; the lab then reaches it there (via ``jump``)."""
        conf = f"Port {port}\n"
        if allow_from:
            conf += "AllowUsers " + " ".join(f"root@{a}" for a in allow_from) + "\n"
        self.ssh(
            host,
            f"printf '%s' {shlex.quote(conf)} > /etc/ssh/sshd_config.d/lab-net.conf"
            " && systemctl reload ssh",
        )
        self.hosts[host].ssh_port, self.hosts[host].jump = port, jump
        self.save()
        self._write_ssh_files()
        deadline = time.monotonic() + 20
        while self.ssh(host, "true", check=False, timeout=10).returncode != 0:
            if time.monotonic() > deadline:
                raise LabError(f"lab host {host}: no SSH on port {port} after moving sshd")
            time.sleep(0.3)
