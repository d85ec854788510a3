"""Running commands on the old and new hosts, and the few helpers patchwork had.

:class:`Runner` is the only way the tool reaches a host. It echoes each command
with the host it runs on, and under ``--dry`` prints instead of connecting.
"""

from __future__ import annotations

import ipaddress
import logging
import select
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import fabric
import paramiko
import paramiko.agent
from invoke.exceptions import UnexpectedExit

from chatmail_migrate import audit
from chatmail_migrate.errors import HostKeyError, MigrateError
from chatmail_migrate.hosts import copy_commands, known_hosts
from chatmail_migrate.hosts.connect import connect, describe_connect_error
from chatmail_migrate.hosts.host_keys import HOST_KEYS_SCRIPT, fingerprint, known_hosts_files
from chatmail_migrate.hostspec import canonical_address, ip, split_host
from chatmail_migrate.settings import Settings

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
                self.settings,
                self.host(role),
                forward_agent=forward_agent,
                known_as=self.known_as(role),
            )
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
            copy_commands.for_unit(script) if launcher else script
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
        if ip(conn.host):
            return canonical_address(conn.host)
        if conn.gateway:
            return None
        peer = conn.client.get_transport().sock.getpeername()
        return canonical_address(peer[0].split("%")[0])

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
