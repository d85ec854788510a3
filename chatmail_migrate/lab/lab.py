"""A lab of Debian 12 hosts booted with systemd-nspawn, reachable over SSH.

Every resource the lab creates (overlay mounts, cgroups, namespaces, links,
processes) is recorded in a state file as soon as it exists, so ``down`` can
remove exactly those, even after an ``up`` that failed half-way.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from chatmail_migrate.lab import net
from chatmail_migrate.lab.rootfs import LabError, ensure_rootfs

__all__ = ["Host", "Lab", "LabError"]

HOST_NAMES = ("old", "new", "spare")
DEFAULT_NAME = "cmlab"
DEFAULT_DOMAIN = "relay.lab.example"
DEFAULT_STATE_DIR = Path("/var/lib/chatmail-migrate/labs")
CGROUP_ROOT = Path("/sys/fs/cgroup")
DEFAULT_RELAY_VERSION = "1.7.0"
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
class Lab:
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
    def load(cls, name: str = DEFAULT_NAME) -> Lab | None:
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
        host.cgroups = self._make_cgroups(host.machine)
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

    def _make_cgroups(self, machine: str) -> list[str]:
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

    # -- the networks operators have ----------------------------------------
    def address6(self, host: str) -> str:
        return self.hosts[host].address6

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

    def tag_relay_checkout(self, version: str) -> None:
        """Mark the lab's relay checkout as release ``version`` (a git tag, as upstream)."""

        def git(*args: str) -> None:
            subprocess.run(
                [
                    "git",
                    "-C",
                    str(self.relay_dir),
                    "-c",
                    "user.name=lab",
                    "-c",
                    "user.email=lab@localhost",
                    *args,
                ],
                check=True,
                capture_output=True,
            )

        git("commit", "-q", "--allow-empty", "-m", f"lab relay {version}")
        git("tag", "-f", version)

    def _write_relay_dir(self) -> None:
        self.relay_dir.mkdir(exist_ok=True)
        (self.relay_dir / "chatmail.ini").write_text(
            "# Lab relay checkout made by chatmail-migrate's lab: no real cmdeploy here,\n"
            f"# the lab's stand-in ({STANDIN_COMMAND}) is used instead.\n"
            "[params]\n"
            f"mail_domain = {self.domain}\n"
            "max_user_send_per_minute = 60\n"
            "max_mailbox_size = 100M\n"
            "delete_mails_after = 20\n"
            "delete_inactive_users_after = 90\n"
            "username_min_length = 9\n"
            "username_max_length = 9\n"
            "password_min_length = 9\n"
        )
        subprocess.run(["git", "init", "-q", str(self.relay_dir)], check=True)
        subprocess.run(["git", "-C", str(self.relay_dir), "add", "chatmail.ini"], check=True)
        self.tag_relay_checkout(DEFAULT_RELAY_VERSION)

    def set_ini(self, **params: str) -> None:
        """Set (or, with "", remove) keys of the relay checkout's chatmail.ini."""
        ini = self.relay_dir / "chatmail.ini"
        lines = [
            line
            for line in ini.read_text().splitlines()
            if line.partition("=")[0].strip() not in params
        ]
        lines += [f"{key} = {value}" for key, value in params.items() if value]
        ini.write_text("\n".join(lines) + "\n")

    def _wait_ready(self, hostname: str, timeout: float = 90) -> None:
        host = self.hosts[hostname]
        deadline = time.monotonic() + timeout
        while True:
            if not _alive(host.pid):
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

    def console_tail(self, hostname: str, lines: int = 20) -> str:
        path = self.host_dir(hostname) / "console.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # -- down -------------------------------------------------------------
    def down(self, log=print) -> None:
        for host in self.hosts.values():
            self._stop_host(host)
        # By pid, and only if that pid is still this lab's agent: pids are reused.
        agent = _cmdline(self.agent_pid)
        if self.agent_pid and agent.startswith("ssh-agent") and str(self.agent_sock) in agent:
            _kill([self.agent_pid])
        for host in self.hosts.values():
            net.remove_host_link(host.netns, host.veth)
        if self.bridge:
            net.remove_bridge(self.bridge)
        shutil.rmtree(self.dir, ignore_errors=True)
        log(f"lab {self.name}: down")

    def _stop_host(self, host: Host) -> None:
        pids = set(net.netns_pids(host.netns)) if net.netns_exists(host.netns) else set()
        for cgroup in host.cgroups:
            pids.update(_cgroup_pids(Path(cgroup)))
        # Only this host's nspawn: a dead host's pid may now be another lab's nspawn
        # (a lab that failed half-way up, torn down while another boots), whose
        # death would end that other lab's host.
        if f" -M {host.machine} " in f" {_cmdline(host.pid)} ":
            pids.add(host.pid)
        _kill(sorted(pids))
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

    # -- status -----------------------------------------------------------
    def status(self) -> dict[str, str]:
        result = {}
        for host in self.hosts.values():
            if not _alive(host.pid):
                result[host.name] = "stopped"
                continue
            probe = self.ssh(host.name, "systemctl is-system-running", check=False, timeout=10)
            result[host.name] = probe.stdout.strip() or f"unreachable ({probe.stderr.strip()})"
        return result


def standin_command() -> str:
    """The stand-in's command line, absolute so it works whatever PATH says."""
    beside = Path(sys.executable).parent / STANDIN_COMMAND
    if beside.exists():
        return shlex.quote(str(beside))
    return shlex.join([sys.executable, "-m", "chatmail_migrate.lab.cmdeploy_standin"])


def _cmdline(pid: int | None) -> str:
    if not pid:
        return ""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int | None) -> bool:
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


def _kill(pids: list[int], timeout: float = 10) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
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
