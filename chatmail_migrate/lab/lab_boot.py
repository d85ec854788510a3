"""Booting a lab's hosts: the ssh-agent, each host's overlay root, and its systemd.

``Lab.up`` (``lab.py``) calls these in order; each records what it made in the
state file at once, so a boot that fails half-way is torn down completely.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import time
import uuid
from pathlib import Path

from chatmail_migrate.lab import net
from chatmail_migrate.lab.lab_processes import alive, make_cgroups
from chatmail_migrate.lab.lab_state import Host, LabState
from chatmail_migrate.lab.rootfs import LabError


class LabBoot(LabState):
    """The steps of ``Lab.up`` that make a host: a part of ``Lab``, methods only (the
    fields are ``LabState``'s), kept as methods so a test can replace one."""

    def _start_agent(self) -> None:
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"chatmail-lab-{self.name}",
                "-f",
                str(self.key),
            ],
            check=True,
        )
        self.agent_sock.unlink(missing_ok=True)
        agent = subprocess.Popen(
            ["ssh-agent", "-D", "-a", str(self.agent_sock)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.agent_pid = agent.pid
        self.save()
        # The socket appears at bind(), a moment before the agent listens on it.
        env = {**os.environ, "SSH_AUTH_SOCK": str(self.agent_sock)}
        for _ in range(200):
            added = subprocess.run(["ssh-add", "-q", str(self.key)], env=env, capture_output=True)
            if added.returncode == 0:
                return
            time.sleep(0.05)
        raise LabError(f"the lab's ssh-agent never took its key: {added.stderr.decode().strip()}")

    def _boot_host(
        self, hostname: str, address: str, prefixlen: int, rootfs: Path, address6: str
    ) -> None:
        hdir = self.host_dir(hostname)
        host = Host(
            name=hostname,
            address=address,
            address6=address6,
            netns=f"{self.name}-{hostname}",
            veth=f"{self.name}-{hostname}",
            machine=f"{self.name}-{hostname}",
            root=str(hdir / "root"),
        )
        self.hosts[hostname] = host
        self.save()
        net.add_host_link(
            host.netns, host.veth, self.bridge, f"{address}/{prefixlen}", f"{address6}/64"
        )
        for sub in ("root", "upper", "work"):
            (hdir / sub).mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={rootfs},upperdir={hdir / 'upper'},workdir={hdir / 'work'}",
                host.root,
            ],
            check=True,
        )
        host.mounted = True
        st = os.stat(host.root)
        host.root_lock = f"inode-{st.st_dev}:{st.st_ino}"
        self.save()
        self._prepare_root(host)
        host.cgroups = make_cgroups(host.machine)
        self.save()
        join = "; ".join(f"echo $$ > {shlex.quote(c)}/cgroup.procs" for c in host.cgroups)
        cmd = [
            "systemd-nspawn",
            "--quiet",
            "--register=no",
            "--keep-unit",
            "-D",
            host.root,
            "-M",
            host.machine,
            "--boot",
            f"--network-namespace-path=/run/netns/{host.netns}",
            "--resolv-conf=off",
            "--timezone=off",
            "--link-journal=no",
        ]
        console = open(hdir / "console.log", "wb")
        proc = subprocess.Popen(
            ["sh", "-c", f'{join}; exec "$@"', "sh", *cmd],
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        console.close()
        host.pid = proc.pid
        self.save()

    def _prepare_root(self, host: Host) -> None:
        root = Path(host.root)
        (root / "etc/hostname").write_text(host.name + "\n")
        (root / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {host.name}\n")
        (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
        # No resolver inside the lab: lookups fail fast and mail to outside stays deferred.
        (root / "etc/resolv.conf").write_text(
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
        )
        ssh_dir = root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        auth = ssh_dir / "authorized_keys"
        auth.write_text((self.key.with_suffix(".pub")).read_text())
        auth.chmod(0o600)
        hostkey = root / "etc/ssh/ssh_host_ed25519_key"
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"root@{host.name}",
                "-f",
                str(hostkey),
            ],
            check=True,
        )
        (root / "etc/ssh/sshd_config.d/lab.conf").write_text(
            "HostKey /etc/ssh/ssh_host_ed25519_key\nUseDNS no\n"
        )
        subprocess.run(
            ["chroot", str(root), "postconf", "-e", f"myhostname={host.name}.{self.domain}"],
            check=True,
        )

    def _wait_ready(self, hostname: str, timeout: float = 90) -> None:
        host = self.hosts[hostname]
        deadline = time.monotonic() + timeout
        while True:
            if not alive(host.pid):
                raise LabError(
                    f"lab host {hostname} stopped while booting:\n{self.console_tail(hostname)}"
                )
            try:
                with socket.create_connection((host.address, 22), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise LabError(
                        f"lab host {hostname}: no SSH after {timeout:.0f}s:\n"
                        + self.console_tail(hostname)
                    ) from None
                time.sleep(0.2)
        state = self.ssh(
            hostname,
            "systemctl is-system-running --wait",
            check=False,
            timeout=max(5, deadline - time.monotonic()),
        ).stdout.strip()
        if state not in ("running", "degraded"):
            raise LabError(f"lab host {hostname} did not finish booting: {state}")
