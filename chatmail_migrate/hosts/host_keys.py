"""Host keys: the operator's known_hosts, as OpenSSH reads it."""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import fabric
import paramiko
import paramiko.agent

from chatmail_migrate.errors import HostKeyError
from chatmail_migrate.hosts import known_hosts


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return f"{key.get_name()} SHA256:{base64.b64encode(digest).decode().rstrip('=')}"


def key_fingerprint(key_type: str, key: str) -> str:
    """``fingerprint`` of a key as known_hosts writes it (type, base64)."""
    digest = hashlib.sha256(base64.b64decode(key)).digest()
    return f"{key_type} SHA256:{base64.b64encode(digest).decode().rstrip('=')}"


# The public halves of the keys sshd serves (its effective HostKey settings), else of
# the usual files; sshd -T needs root, as the tool is on the hosts.
HOST_KEYS_SCRIPT = (
    "keys=$(for k in $(sshd -T 2>/dev/null | awk '$1 == \"hostkey\" {print $2}'); do "
    'ssh-keygen -y -f "$k" 2>/dev/null || cat "$k.pub" 2>/dev/null; done); '
    'if [ -n "$keys" ]; then echo "$keys"; else cat /etc/ssh/ssh_host_*_key.pub; fi'
)


def known_hosts_files(conn: fabric.Connection) -> tuple[list[Path], list[Path]]:
    """The user and global known_hosts files OpenSSH would read for this host."""

    def paths(value: str | None, default: list[str]) -> list[Path]:
        words = value.split() if value else default
        return [Path(w.replace("%d", str(Path.home()))).expanduser() for w in words if w != "none"]

    cfg = conn.ssh_config
    user = paths(cfg.get("userknownhostsfile"), ["~/.ssh/known_hosts", "~/.ssh/known_hosts2"])
    system = paths(
        cfg.get("globalknownhostsfile"), ["/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"]
    )
    return user, system


class KnownHostsPolicy(paramiko.MissingHostKeyPolicy):
    """Refuse hosts whose key is not known, or (trust on first use) record it.

    paramiko has already accepted a key a plain line holds for the host; this sees the
    rest, and decides as OpenSSH would. ``known_as``: other names the operator's
    known_hosts may know the host by (the mail domain, for an old host the tool
    reached at the address DNS gave); a key recorded there is accepted as known.
    ``openssh``: asks OpenSSH about the host's certificate (None: it accepted it, else
    why not), for hosts a ``@cert-authority`` line is meant for.
    """

    def __init__(
        self,
        accept_new: bool,
        record_to: Path,
        searched: list[Path],
        known_as: tuple[str, ...] = (),
        what: str = "",
        hashed: bool = False,
        openssh: Callable[[paramiko.PKey], str | None] | None = None,
    ):
        self.accept_new = accept_new
        self.record_to = record_to
        self.searched = searched
        self.known_as = known_as
        self.what = what
        self.hashed = hashed
        self.openssh = openssh

    def _other_names(self, hostname: str) -> list[str]:
        port = hostname.rpartition("]:")[2] if hostname.startswith("[") else "22"
        return [name if port == "22" else f"[{name}]:{port}" for name in self.known_as]

    def missing_host_key(self, client, hostname, key):
        seen = (key.get_name(), key.get_base64())
        for name in [hostname, *self._other_names(hostname)]:
            path = known_hosts.revoked_for(self.searched, name, seen)
            if path:
                raise HostKeyError(
                    f"host key of {self.what}{hostname} ({fingerprint(key)}) is marked "
                    f"@revoked in {path}: it is never accepted; if the host was given a new "
                    "key, check its fingerprint and add that one"
                )
        if seen in known_hosts.keys_for(self.searched, hostname):
            return  # a line paramiko does not read (a wildcard, or beside a @revoked key)
        other = next(
            (
                n
                for n in self._other_names(hostname)
                if seen in known_hosts.keys_for(self.searched, n)
            ),
            None,
        )
        if other:
            # As OpenSSH's CheckHostIP would: cmdeploy's own ssh (and pyinfra) look the
            # host up by this address, and without a terminal refuse an unknown key.
            self._record(hostname, key)
            print(
                f"  host key of {hostname} is the one known_hosts has for {other}: "
                f"recorded it for {hostname} too, in {self.record_to}"
            )
            return
        names = [hostname, *self._other_names(hostname)]
        if self.openssh and known_hosts.has_cert_authority(self.searched, names):
            # paramiko cannot check host certificates: OpenSSH, with the operator's
            # config and files, decides; nothing is recorded.
            refused = self.openssh(key)
            if refused:
                raise HostKeyError(
                    f"host key of {self.what}{hostname} ({fingerprint(key)}) is in no plain "
                    "line, and OpenSSH did not accept the host's certificate for it (the "
                    f"@cert-authority line meant for it): {refused}"
                )
            print(
                f"  host key of {hostname} is certified by a CA your known_hosts trusts for "
                f"it (checked by OpenSSH): {fingerprint(key)}, accepted, not recorded"
            )
            return
        if not self.accept_new:
            also = f" (nor under {', '.join(self.known_as)})" if self.known_as else ""
            raise HostKeyError(
                f"host key of {self.what}{hostname} ({fingerprint(key)}) is not in "
                f"{' or '.join(str(p) for p in self.searched)}{also}: check that fingerprint, "
                f"then add it (ssh {hostname} once), or rerun with --accept-new-host-keys"
            )
        self._record(hostname, key)
        print(f"  recorded new host key of {hostname} ({fingerprint(key)}) in {self.record_to}")

    def _record(self, hostname: str, key: paramiko.PKey) -> None:
        known_hosts.append(
            self.record_to, hostname, (key.get_name(), key.get_base64()), self.hashed
        )


def hashes_known_hosts(conn: fabric.Connection) -> bool:
    """Whether the ssh config says HashKnownHosts yes for this host."""
    return str(conn.ssh_config.get("hashknownhosts", "no")).lower() == "yes"


def _openssh_certificate_check(
    ssh_config: str | None, conn: fabric.Connection
) -> Callable[[paramiko.PKey], str | None]:
    """OpenSSH's verdict on the host's certificate for ``key``: it logs in as the tool
    would (same config and known_hosts), offering no authentication at all."""

    def check(key: paramiko.PKey) -> str | None:
        command = [
            "ssh",
            *(["-F", ssh_config] if ssh_config else []),
            "-v",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "UpdateHostKeys=no",
            "-o",
            "PreferredAuthentications=password",
            "-o",
            "ConnectTimeout=15",
            "-p",
            str(conn.port),
            "-l",
            conn.user,
            conn.original_host,
            "true",
        ]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"ssh could not be run: {e}"
        certified = re.search(r"Server host certificate: \S+ (SHA256:[^\s,]+)", result.stderr)
        matched = re.search(r"is known and matches the \S+ host certificate", result.stderr)
        if certified and matched and certified.group(1) == fingerprint(key).split()[1]:
            return None
        said = [line for line in result.stderr.splitlines() if not line.startswith("debug")]
        return said[0] if said else "it saw no host certificate"

    return check


def trust_known_hosts(
    conn: fabric.Connection,
    accept_new: bool,
    known_as: tuple[str, ...] = (),
    what: str = "",
    ssh_config: str | None = None,
) -> None:
    """Check host keys as OpenSSH does, instead of Fabric's accept-anything default.

    paramiko reads only plain lines (it raises on ``@cert-authority`` and ``@revoked``
    ones) and never sees a revoked key: the policy refuses it.
    """
    user, system = known_hosts_files(conn)
    revoked = known_hosts.revoked([*user, *system])
    for path, load in [(p, conn.client.load_system_host_keys) for p in system] + [
        (p, conn.client.get_host_keys().load) for p in user
    ]:
        if path.is_file():
            with tempfile.NamedTemporaryFile("w", prefix="chatmail-migrate-kh-") as plain:
                plain.write(known_hosts.without_markers(path, revoked))
                plain.flush()
                load(plain.name)
    record_to = user[0] if user else Path("~/.ssh/known_hosts").expanduser()
    policy = KnownHostsPolicy(
        accept_new,
        record_to,
        [*user, *system],
        known_as,
        what,
        hashes_known_hosts(conn),
        _openssh_certificate_check(ssh_config, conn),
    )
    conn.client.set_missing_host_key_policy(policy)
