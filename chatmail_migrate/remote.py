"""Running commands on the old and new hosts, and the few helpers patchwork had.

:class:`Runner` is the only way the tool reaches a host. It echoes each command
with the host it runs on, and under ``--dry`` prints instead of connecting.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import ipaddress
import logging
import re
import select
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import fabric
import paramiko
import paramiko.agent
from invoke.exceptions import UnexpectedExit

from . import audit, commands, known_hosts
from .errors import HostKeyError, MigrateError
from .settings import Settings, canonical_address, split_host

# paramiko reports transport errors from its own thread as logged tracebacks; the
# tool reports them itself, in one line.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False


@dataclass
class Result:
    stdout: str
    stderr: str
    exited: int

    @property
    def ok(self) -> bool:
        return self.exited == 0


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
            (n for n in self._other_names(hostname)
             if seen in known_hosts.keys_for(self.searched, n)), None,
        )  # fmt: skip
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
        known_hosts.append(self.record_to, hostname, (key.get_name(), key.get_base64()),
                           self.hashed)  # fmt: skip


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
            "ssh", *(["-F", ssh_config] if ssh_config else []), "-v", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", "UpdateHostKeys=no",
            "-o", "PreferredAuthentications=password", "-o", "ConnectTimeout=15",
            "-p", str(conn.port), "-l", conn.user, conn.original_host, "true",
        ]  # fmt: skip
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=60,
                                    stdin=subprocess.DEVNULL)  # fmt: skip
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
    policy = KnownHostsPolicy(accept_new, record_to, [*user, *system], known_as, what,
                              hashes_known_hosts(conn),
                              _openssh_certificate_check(ssh_config, conn))  # fmt: skip
    conn.client.set_missing_host_key_policy(policy)


def connect(
    settings: Settings, host: str, *, forward_agent: bool = False, known_as: tuple[str, ...] = ()
) -> fabric.Connection:
    """A Connection honouring the ssh config, with root as the default user.

    ``forward_agent`` is always set explicitly, so a ``ForwardAgent yes`` in the
    operator's ssh config never forwards the agent to a session that does not need it.
    Jump hosts (``ProxyJump``) are checked against known_hosts like the host itself:
    Fabric would accept any key they present.
    """
    config = fabric.Config(runtime_ssh_path=settings.ssh_config)
    config.user = settings.user  # ssh config's User and user@host still win
    timeout = settings.connect_timeout
    spec = split_host(host)
    kwargs = {"banner_timeout": timeout, "auth_timeout": timeout, **settings.connect_kwargs}
    conn = fabric.Connection(
        spec.host,
        user=spec.user,
        port=spec.port,
        config=config,
        forward_agent=forward_agent,
        connect_timeout=timeout,
        connect_kwargs=kwargs,
    )
    trust_known_hosts(conn, settings.accept_new_host_keys, known_as, ssh_config=settings.ssh_config)
    target, jump = conn, conn.gateway
    while isinstance(jump, fabric.Connection):
        jump.connect_timeout = timeout
        jump.connect_kwargs = {**jump.connect_kwargs, **kwargs}
        what = f"jump host (ProxyJump of {target.host}) "
        trust_known_hosts(
            jump, settings.accept_new_host_keys, what=what, ssh_config=settings.ssh_config
        )
        target, jump = jump, jump.gateway
    return conn


def same_endpoint(settings: Settings, a: str, b: str) -> bool:
    """Whether two host strings reach one host once the ssh config is applied."""

    def endpoint(host: str) -> tuple[str, int, str]:
        conn = connect(settings, host)
        return canonical_address(conn.host), conn.port, conn.user

    return a == b or endpoint(a) == endpoint(b)


def describe_connect_error(host: str, e: BaseException) -> str:
    """One line naming what went wrong when connecting, and how to fix it."""
    if isinstance(e, HostKeyError):
        return str(e)
    if isinstance(e, paramiko.BadHostKeyException):
        return (
            f"HOST KEY CHANGED for {host}: known_hosts has {fingerprint(e.expected_key)}, the "
            f"host presents {fingerprint(e.key)}. Someone may be intercepting; if the host was "
            f"reinstalled, check the new fingerprint, then ssh-keygen -R {e.hostname}"
        )
    if isinstance(e, socket.gaierror):
        return f"cannot resolve {host}: {e.strerror}; check the name (and HostName in ssh config)"
    if isinstance(e, paramiko.AuthenticationException):
        return (
            f"authentication to {host} failed ({e}): check the user (root by default) and "
            "that your agent holds a key the host accepts (ssh-add -l)"
        )
    text = str(e).lower()
    if isinstance(e, TimeoutError) or any(
        t in text for t in ("timed out", "banner", "no existing session")
    ):
        return f"{host} did not answer in time (timed out): check the address and firewall"
    if isinstance(e, paramiko.ssh_exception.NoValidConnectionsError):
        return f"{host} refused the connection ({e}): is sshd running, is the port right?"
    if isinstance(e, ConnectionRefusedError):
        return f"{host} refused the connection: is sshd running, is the port right?"
    if isinstance(e, OSError) and e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"{host} is unreachable ({e.strerror}): check the address and routes"
    return f"cannot connect to {host}: {type(e).__name__}: {e}"


class Runner:
    def __init__(self, settings: Settings, echo=print):
        self.settings = settings
        self.echo = echo
        self._connections: dict[tuple[str, bool], fabric.Connection] = {}

    @property
    def dry(self) -> bool:
        return self.settings.dry

    def host(self, role: str) -> str:
        host = self.settings.old_host if role == "old" else self.settings.new_host
        if not host:
            self.settings.need(f"{role}_host")
        return host  # type: ignore[return-value]

    def known_as(self, role: str) -> tuple[str, ...]:
        """Other names known_hosts may know the host by: the old host reached at an
        address (the mail domain pinned to the address DNS gave) by the mail domain."""
        domain = self.settings.mail_domain
        if role != "old" or not domain:
            return ()
        try:
            ipaddress.ip_address(split_host(self.host(role)).host)
        except ValueError:
            return ()
        return (domain,)

    def connection(self, role: str, *, forward_agent: bool = False) -> fabric.Connection:
        key = (role, forward_agent)
        if key not in self._connections:
            conn = connect(
                self.settings, self.host(role), forward_agent=forward_agent,
                known_as=self.known_as(role),
            )  # fmt: skip
            try:
                conn.open()
            except (OSError, paramiko.SSHException, HostKeyError) as e:
                raise MigrateError(
                    f"{role} host: {describe_connect_error(self.host(role), e)}"
                ) from None
            self._connections[key] = conn
        return self._connections[key]

    def run(
        self,
        role: str,
        command: str,
        *,
        hide: bool = False,
        warn: bool = False,
        forward_agent: bool = False,
        quiet: bool = False,
        _echoed: bool = False,
    ) -> Result:
        """Run ``command`` on the ``role`` host; under --dry only print it."""
        if not _echoed and (self.dry or not quiet):
            agent = " (agent forwarded)" if forward_agent else ""
            self.echo(f"[{role}: {self.host(role)}]{agent} $ {command}")
        if self.dry:
            return Result("", "", 0)
        conn = self.connection(role, forward_agent=forward_agent)
        started, clock = time.time(), time.monotonic()
        try:
            r = conn.run(command, hide=hide, warn=warn, in_stream=False)
        except UnexpectedExit as e:
            self._audit(role, command, started, clock, e.result.exited, forward_agent)
            tail = (e.result.stderr or e.result.stdout).strip().splitlines()[-5:]
            raise MigrateError(
                f"on {role} host {self.host(role)}: `{_short(command)}` exited "
                f"{e.result.exited}" + (f": {' / '.join(tail)}" if tail else "")
            ) from None
        except (OSError, paramiko.SSHException) as e:
            self._audit(role, command, started, clock, -1, forward_agent)
            raise MigrateError(f"lost connection to {role} host {self.host(role)}: {e}") from None
        self._audit(role, command, started, clock, r.exited, forward_agent)
        return Result(r.stdout, r.stderr, r.exited)

    def _audit(self, role, command, started, clock, code, forward_agent=False) -> None:
        where = f"[{role}: {self.host(role)}]" + (" (agent forwarded)" if forward_agent else "")
        audit.record(self.settings, where, command, started, time.monotonic() - clock, code)

    def run_script(self, role: str, script: str, **kwargs) -> Result:
        """Run a multi-line bash script; echoed as written, not as one quoted line."""
        if self.dry or not kwargs.get("quiet"):
            agent = " (agent forwarded)" if kwargs.get("forward_agent") else ""
            self.echo(f"[{role}: {self.host(role)}]{agent} $ bash <<'EOF'\n{script}\nEOF")
        return self.run(
            role, "bash -c " + shlex.quote(script), **{**kwargs, "quiet": True}, _echoed=True
        )

    def capture(
        self,
        role: str,
        command: str,
        display: str | None = None,
        *,
        input: bytes | None = None,
        warn: bool = False,
    ) -> BinaryIO:
        """Run ``command``; its (large) stdout, in a temporary file read from the start.

        Invoke's runner rejoins everything read so far for each 1000-byte chunk, which
        is quadratic on outputs of megabytes; this reads the channel directly. A file,
        not memory: verify's listings of a million-file relay are tens of MB each.
        ``input`` goes to the command's stdin, so a secret in it reaches no command
        line and no log. ``warn``: a failing command that printed something returns
        that (its own account of the failure); one that printed nothing still raises.
        """
        self.echo(f"[{role}: {self.host(role)}] $ {display or command}")
        data = tempfile.TemporaryFile()
        if self.dry:
            return data
        client = self.connection(role).client
        started, clock = time.time(), time.monotonic()
        try:
            stdin, stdout, stderr = client.exec_command(command)
            if input is not None:
                stdin.write(input)
                stdin.flush()
                stdin.channel.shutdown_write()
            while chunk := stdout.read(1 << 16):
                data.write(chunk)
            code = stdout.channel.recv_exit_status()
            errors = stderr.read().decode(errors="replace").strip()
        except (OSError, paramiko.SSHException) as e:
            data.close()
            self._audit(role, display or command, started, clock, -1)
            raise MigrateError(f"lost connection to {role} host {self.host(role)}: {e}") from None
        self._audit(role, display or command, started, clock, code)
        if code != 0 and not (warn and data.tell()):
            data.close()
            raise MigrateError(
                f"on {role} host {self.host(role)}: `{_short(command)}` exited {code}: "
                + " / ".join(errors.splitlines()[-3:])
            )
        data.seek(0)
        return data

    def stream(
        self,
        role: str,
        script: str,
        on_line: Callable[[str], bool],
        *,
        forward_agent: bool = False,
        launcher: str = "",
    ) -> None:
        """Run a bash script, handing each output line to ``on_line`` as it arrives.

        Lines ``on_line`` does not take are printed. Used for long copies, whose
        progress lines must be seen while they run (Invoke's runner is quadratic).
        ``launcher``: a command line prefix that starts the script's bash.
        """
        agent = " (agent forwarded)" if forward_agent else ""
        self.echo(f"[{role}: {self.host(role)}]{agent} $ {launcher}bash <<'EOF'\n{script}\nEOF")
        if self.dry:
            return
        # The launcher starts a systemd unit, whose command line systemd expands.
        command = f"{launcher}bash -c " + shlex.quote(
            commands.for_unit(script) if launcher else script
        )
        transport = self.connection(role).client.get_transport()
        errors: list[str] = []
        started, clock = time.time(), time.monotonic()
        code = -1
        try:
            channel = transport.open_session()
            if forward_agent:
                paramiko.agent.AgentRequestHandler(channel)
            channel.exec_command(command)
            channel.settimeout(0.5)
            pending = {"out": b"", "err": b""}

            def lines(kind: str, data: bytes, final: bool = False):
                pending[kind] += data
                *complete, pending[kind] = pending[kind].split(b"\n")
                if final and pending[kind]:
                    complete.append(pending[kind])
                return [c.decode(errors="replace") for c in complete]

            while True:
                got = False
                if channel.recv_ready():
                    got = True
                    for line in lines("out", channel.recv(65536)):
                        if not on_line(line):
                            print(line, flush=True)
                if channel.recv_stderr_ready():
                    got = True
                    for line in lines("err", channel.recv_stderr(65536)):
                        errors.append(line)
                        print(line, file=sys.stderr, flush=True)
                ready = channel.recv_ready() or channel.recv_stderr_ready()
                if channel.exit_status_ready() and not ready:
                    break
                if not got:
                    select.select([channel], [], [], 0.5)
            for line in lines("out", b"", final=True):
                if not on_line(line):
                    print(line, flush=True)
            for line in lines("err", b"", final=True):
                errors.append(line)
                print(line, file=sys.stderr, flush=True)
            code = channel.recv_exit_status()
            channel.close()
        except (OSError, paramiko.SSHException, EOFError) as e:
            raise MigrateError(f"lost connection to {role} host {self.host(role)}: {e}") from None
        finally:
            logged = f"{launcher}bash <<'EOF'\n{script}\nEOF"
            self._audit(role, logged, started, clock, code, forward_agent)
        if code != 0:
            tail = [e for e in errors if e.strip()][-3:]
            raise MigrateError(
                f"on {role} host {self.host(role)}: `{_short(script)}...` exited {code}"
                + (f": {' / '.join(tail)}" if tail else "")
            )

    def server_key(self, role: str) -> paramiko.PKey:
        """The host key the tool's own (checked) connection to ``role`` saw."""
        return self.connection(role).client.get_transport().get_remote_server_key()

    def host_keys(self, role: str) -> list[tuple[str, str]]:
        """Every host key (type, base64) the host's sshd serves, the one the tool's
        connection checked first.

        OpenSSH picks the key type by what known_hosts holds for the name it is given,
        paramiko by the first line for the address: a name that leads to this host
        must accept each type. The others are read from the host over that checked
        connection, as OpenSSH's UpdateHostKeys learns them (from the host, once it is
        verified), never from an unauthenticated scan.
        """
        seen = self.server_key(role)
        checked = (seen.get_name(), seen.get_base64())
        out = self.run(role, HOST_KEYS_SCRIPT, hide=True, quiet=True).stdout
        listed = [(p[0], p[1]) for p in (line.split() for line in out.splitlines()) if len(p) > 1]
        if checked not in listed:
            raise MigrateError(
                f"{role} host {self.host(role)}: its sshd does not list the host key this "
                f"connection saw ({fingerprint(seen)}) among its keys: check its HostKey "
                "settings (sshd -T) and that the address reaches this host"
            )
        return [checked, *dict.fromkeys(k for k in listed if k != checked)]

    def host_key_line(self, role: str, alias: str) -> str:
        """known_hosts lines naming ``alias`` with the host's keys this machine trusts.

        The keys come from the known_hosts files OpenSSH would read for the host;
        when they hold none (a key accepted with --accept-new-host-keys is recorded
        on connecting), from this machine's own, checked, connection.
        """
        if self.dry:
            return f"{alias} <host key of {self.host(role)}>"
        conn = connect(self.settings, self.host(role))
        name = conn.host if conn.port == 22 else f"[{conn.host}]:{conn.port}"
        keys = known_hosts.keys_for([p for files in known_hosts_files(conn) for p in files], name)
        if not keys:
            key = self.server_key(role)
            keys = [(key.get_name(), key.get_base64())]
        return "\n".join(f"{alias} {t} {k}" for t, k in sorted(keys))

    def reached_address(self, role: str) -> str | None:
        """The IP address the tool's connection reached the host at (None through a
        jump host or a ProxyCommand, whose peer is not the host)."""
        conn = self.connection(role)
        try:
            return str(ipaddress.ip_address(conn.host))
        except ValueError:
            pass
        if conn.gateway:
            return None
        peer = conn.client.get_transport().sock.getpeername()
        return str(ipaddress.ip_address(peer[0].split("%")[0]))

    def address(self, role: str) -> tuple[str, int, str]:
        """(hostname, port, user) of ``role`` after ssh config resolution."""
        conn = connect(self.settings, self.host(role))
        return conn.host, conn.port, conn.user

    def drop(self, role: str) -> None:
        """Close the connections to ``role``: the next command connects anew."""
        for key in [k for k in self._connections if k[0] == role]:
            self._connections.pop(key).close()

    def close(self) -> None:
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()


def _short(command: str, limit: int = 120) -> str:
    first = command.strip().splitlines()[0] if command.strip() else command
    return first if len(first) <= limit else first[: limit - 3] + "..."


# -- the helpers patchwork used to provide ------------------------------------


def path_exists(runner: Runner, role: str, path: str) -> bool:
    return runner.run(role, f"test -e {shlex.quote(path)}", warn=True, hide=True, quiet=True).ok


def have_program(runner: Runner, role: str, program: str) -> bool:
    cmd = f"command -v {shlex.quote(program)} >/dev/null"
    return runner.run(role, cmd, warn=True, hide=True, quiet=True).ok


def existing_paths(runner: Runner, role: str, paths: list[str]) -> list[str]:
    """Which of ``paths`` exist on the host, in one round trip."""
    script = "; ".join(f"test -e {shlex.quote(p)} && echo {shlex.quote(p)}" for p in paths)
    out = runner.run(role, script + "; true", hide=True, quiet=True).stdout.split("\n")
    return [p for p in paths if p in out]
