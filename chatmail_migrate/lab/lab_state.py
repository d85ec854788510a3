"""What a lab is and what it keeps on disk: its hosts, its state file, its ssh files.

``LabState`` holds the record ``Lab`` (``lab.py``) is made of: the lab's name,
network and hosts, saved to ``state.json`` as soon as anything exists so ``down``
can remove exactly that; the paths of the lab's files; the ssh config and
known_hosts the lab writes (never your ``~/.ssh``); and running a command on a
host over them. The modules that boot hosts, give them networks and keep the relay
checkout build on it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Self

from chatmail_migrate.lab.rootfs import LabError

HOST_NAMES = ("old", "new", "spare")
DEFAULT_NAME = "cmlab"
DEFAULT_DOMAIN = "relay.lab.example"
DEFAULT_STATE_DIR = Path("/var/lib/chatmail-migrate/labs")
STANDIN_COMMAND = "chatmail-lab-cmdeploy-standin"


def state_root() -> Path:
    return Path(os.environ.get("CHATMAIL_LAB_STATE", DEFAULT_STATE_DIR))


@dataclass
class Host:
    name: str
    address: str
    netns: str
    veth: str
    machine: str
    root: str
    pid: int | None = None
    # The host's address in the lab's IPv6 (unique local) /64.
    address6: str = ""
    # Where sshd listens and who may log in (see Lab.move_ssh); how the lab reaches it.
    ssh_port: int = 22
    jump: str = ""
    cgroups: list[str] = field(default_factory=list)
    mounted: bool = False
    # nspawn locks the image by inode and cannot remove the lock file here.
    root_lock: str = ""


@dataclass
class LabState:
    """The lab's record (saved as ``state.json``) and what follows from it alone."""

    name: str = DEFAULT_NAME
    domain: str = DEFAULT_DOMAIN
    subnet: str = ""
    subnet6: str = ""
    bridge: str = ""
    agent_pid: int | None = None
    hosts: dict[str, Host] = field(default_factory=dict)

    # -- paths ------------------------------------------------------------
    @property
    def dir(self) -> Path:
        return state_root() / self.name

    @property
    def ssh_config(self) -> Path:
        return self.dir / "ssh_config"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def key(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def agent_sock(self) -> Path:
        return self.dir / "agent.sock"

    @property
    def relay_dir(self) -> Path:
        return self.dir / "relay"

    def host_dir(self, host: str) -> Path:
        return self.dir / "hosts" / host

    # -- state ------------------------------------------------------------
    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        data = asdict(self)
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        tmp.rename(self.dir / "state.json")

    @classmethod
    def load(cls, name: str = DEFAULT_NAME) -> Self | None:
        path = state_root() / name / "state.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        hosts = {k: Host(**v) for k, v in data.pop("hosts").items()}
        return cls(hosts=hosts, **data)

    def env(self) -> dict[str, str]:
        """Environment that points the tool, ssh and the stand-in at this lab."""
        return {
            "SSH_AUTH_SOCK": str(self.agent_sock),
            "CHATMAIL_RELAY_DIR": str(self.relay_dir),
            "CMDEPLOY": standin_command(),
            "CHATMAIL_LAB_SSH_CONFIG": str(self.ssh_config),
            "CHATMAIL_MIGRATE_SSH_CONFIG": str(self.ssh_config),
            # The lab's own authoritative nameservers (ns1, ns2 on spare).
            "CHATMAIL_MIGRATE_NAMESERVERS": self.nameservers(),
            # What the stand-in resolves names with (the operator's resolver).
            "CHATMAIL_LAB_RESOLVER": self.nameservers(),
        }

    def nameservers(self) -> str:
        """ns1 is spare's address, ns2 the next one (see nameserver.py)."""
        if "spare" not in self.hosts:
            return ""
        prefix, last = self.address("spare").rsplit(".", 1)
        return f"{prefix}.{last},{prefix}.{int(last) + 1}"

    # -- running commands on hosts ----------------------------------------
    def ssh(
        self,
        host: str,
        command: str,
        *,
        input: str | None = None,
        check: bool = True,
        forward_agent: bool = False,
        timeout: float | None = 120,
    ) -> subprocess.CompletedProcess:
        """Run ``command`` on lab host ``host`` as root with OpenSSH."""
        args = ["ssh", "-F", str(self.ssh_config)]
        if forward_agent:
            args.append("-A")
        env = {**os.environ, "SSH_AUTH_SOCK": str(self.agent_sock)}
        result = subprocess.run(
            [*args, host, command],
            input=input,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise LabError(
                f"on lab host {host}: {command!r} exited {result.returncode}: "
                f"{result.stderr.strip()[-2000:]}"
            )
        return result

    def address(self, host: str) -> str:
        return self.hosts[host].address

    def address6(self, host: str) -> str:
        return self.hosts[host].address6

    def console_tail(self, hostname: str, lines: int = 20) -> str:
        path = self.host_dir(hostname) / "console.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # -- ssh files -------------------------------------------------------
    def _write_ssh_files(self) -> None:
        lines = [
            f"# ssh config of chatmail-migrate lab {self.name}: ssh -F {self.ssh_config} old\n"
        ]
        known = []
        for host in self.hosts.values():
            blocks = [([host.name, host.address], host.address)]
            if host.address6:  # reached over IPv6 when named by its IPv6 address
                blocks.append(([host.address6], host.address6))
            lines += [self._ssh_block(host, aliases, hostname) for aliases, hostname in blocks]
            aliases = [a for names, _ in blocks for a in names]
            pub = Path(host.root, "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
            # As on an operator's machine that logged into the relay by its name.
            names = [*aliases, self.domain] if host.name == "old" else aliases
            if host.ssh_port != 22:  # known_hosts names a host on another port so
                names = [f"[{n}]:{host.ssh_port}" for n in names]
            known.append(f"{','.join(names)} {pub[0]} {pub[1]}\n")
        # Any other name (the mail domain, say) is checked against the lab's file too,
        # never against the known_hosts of whoever runs the lab.
        lines.append(
            f"Host *\n    UserKnownHostsFile {self.known_hosts}\n    StrictHostKeyChecking yes\n"
        )
        self.ssh_config.write_text("\n".join(lines))
        self.known_hosts.write_text("".join(known))

    def _ssh_block(self, host: Host, aliases: list[str], hostname: str) -> str:
        return (
            f"Host {' '.join(aliases)}\n"
            f"    HostName {hostname}\n"
            "    User root\n"
            + (f"    Port {host.ssh_port}\n" if host.ssh_port != 22 else "")
            + (f"    ProxyJump {host.jump}\n" if host.jump else "")
            + f"    IdentityFile {self.key}\n"
            f"    IdentityAgent {self.agent_sock}\n"
            f"    UserKnownHostsFile {self.known_hosts}\n"
            "    StrictHostKeyChecking yes\n"
            "    BatchMode yes\n"
            "    ConnectTimeout 5\n"
            "    LogLevel ERROR\n"
        )


def standin_command() -> str:
    """The stand-in's command line, absolute so it works whatever PATH says."""
    beside = Path(sys.executable).parent / STANDIN_COMMAND
    if beside.exists():
        return shlex.quote(str(beside))
    return shlex.join([sys.executable, "-m", "chatmail_migrate.lab.cmdeploy_standin"])
