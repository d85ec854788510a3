"""Running commands on the old and new hosts, and the few helpers patchwork had.

:class:`Runner` is the only way the tool reaches a host. It echoes each command
with the host it runs on, and under ``--dry`` prints instead of connecting.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

import fabric
import paramiko
from invoke.exceptions import UnexpectedExit

from .settings import Settings


class MigrateError(Exception):
    """A step cannot go on; the message says what happened, in one line."""


@dataclass
class Result:
    stdout: str
    stderr: str
    exited: int

    @property
    def ok(self) -> bool:
        return self.exited == 0


def connect(settings: Settings, host: str, *, forward_agent: bool = False) -> fabric.Connection:
    """A Connection honouring the ssh config, with root as the default user.

    ``forward_agent`` is always set explicitly, so a ``ForwardAgent yes`` in the
    operator's ssh config never forwards the agent to a session that does not need it.
    """
    config = fabric.Config(runtime_ssh_path=settings.ssh_config)
    config.user = settings.user  # ssh config's User and user@host still win
    return fabric.Connection(
        host,
        config=config,
        forward_agent=forward_agent,
        connect_timeout=settings.connect_timeout,
        connect_kwargs=dict(settings.connect_kwargs),
    )


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

    def connection(self, role: str, *, forward_agent: bool = False) -> fabric.Connection:
        key = (role, forward_agent)
        if key not in self._connections:
            conn = connect(self.settings, self.host(role), forward_agent=forward_agent)
            try:
                conn.open()
            except (TimeoutError, OSError, paramiko.SSHException) as e:
                raise MigrateError(
                    f"cannot connect to {role} host {self.host(role)}: {e}"
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
        try:
            r = conn.run(command, hide=hide, warn=warn, in_stream=False)
        except UnexpectedExit as e:
            tail = (e.result.stderr or e.result.stdout).strip().splitlines()[-5:]
            raise MigrateError(
                f"on {role} host {self.host(role)}: `{_short(command)}` exited "
                f"{e.result.exited}" + (f": {' / '.join(tail)}" if tail else "")
            ) from None
        except (OSError, paramiko.SSHException) as e:
            raise MigrateError(f"lost connection to {role} host {self.host(role)}: {e}") from None
        return Result(r.stdout, r.stderr, r.exited)

    def run_script(self, role: str, script: str, **kwargs) -> Result:
        """Run a multi-line bash script; echoed as written, not as one quoted line."""
        if self.dry or not kwargs.get("quiet"):
            agent = " (agent forwarded)" if kwargs.get("forward_agent") else ""
            self.echo(f"[{role}: {self.host(role)}]{agent} $ bash <<'EOF'\n{script}\nEOF")
        return self.run(
            role, "bash -c " + shlex.quote(script), **{**kwargs, "quiet": True}, _echoed=True
        )

    def host_key_line(self, role: str, alias: str) -> str:
        """A known_hosts line naming ``alias`` with the key this machine's connection saw."""
        if self.dry:
            return f"{alias} <host key of {self.host(role)}>"
        key = self.connection(role).client.get_transport().get_remote_server_key()
        return f"{alias} {key.get_name()} {key.get_base64()}"

    def address(self, role: str) -> tuple[str, int, str]:
        """(hostname, port, user) of ``role`` after ssh config resolution."""
        conn = connect(self.settings, self.host(role))
        return conn.host, conn.port, conn.user

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
