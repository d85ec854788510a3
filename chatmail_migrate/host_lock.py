"""One migration of a relay at a time, also from two machines: a lock on each host.

The lock beside the journal (lock.py) only sees runs on this machine; a colleague's
run, or yours from another laptop, has a journal of its own. So a run that writes
to a host first takes that host's lock: an ``flock`` held by a shell on the host
that waits on its input, as long as the run lasts. The shell ends, and the lock
with it, when the tool closes its channel or its process dies (its connection
closes). It does not end when the tool merely falls silent: a copy the run started
on old goes on without it, and must not meet another run's copy.
"""

from __future__ import annotations

import shlex
import time

import paramiko

from . import audit
from .errors import MigrateError
from .lock import holder_text
from .remote import Runner
from .settings import Settings

LOCK = "/run/lock/chatmail-migrate.lock"
HOLDER = "/run/lock/chatmail-migrate.holder"
BUSY = 75  # flock's exit code when the lock is held (-E)
NAME = "chatmail-migrate-lock"  # in the holder's command line, for pkill -f


def hold_command(holder: str, lock: str = LOCK, holder_file: str = HOLDER) -> str:
    """Take the lock at once or exit ``BUSY``; then say so and hold it until end of input.

    The shell alone holds the lock's file (no child inherits it), so ending that one
    process, named by ``NAME`` in its command line, frees the lock.
    """
    script = (
        f"exec 9>>{lock}; flock -n -E {BUSY} 9 || exit; "
        f'printf "%s\\n" "$1" > {holder_file}; echo held; read -r _'
    )
    return f"sh -c {shlex.quote(script)} {NAME} {shlex.quote(holder)}"


class HostLocks:
    """The host locks one run holds, taken as its steps need them, let go at its end."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.runner = Runner(settings, echo=lambda line: None)
        self.holder = holder_text()
        self.channels: dict[str, tuple[paramiko.Channel, float]] = {}

    def hold(self, *roles: str) -> None:
        """Take the lock of each ``role`` host not held yet; refuse in one line if taken."""
        if self.settings.dry:
            return
        for role in roles:
            if role not in self.channels:
                self._take(role)

    def _take(self, role: str) -> None:
        host = self.runner.host(role)
        transport = self.runner.connection(role).client.get_transport()
        started = time.time()
        try:
            channel = transport.open_session()
            channel.exec_command(hold_command(self.holder))
            answer = channel.makefile("r").readline().strip()
        except (OSError, paramiko.SSHException) as e:
            raise MigrateError(f"cannot take the lock on {role} host {host}: {e}") from None
        if answer != "held":
            code = channel.recv_exit_status()
            channel.close()
            if code != BUSY:
                raise MigrateError(
                    f"cannot take the lock on {role} host {host} ({LOCK}): flock exited {code}"
                )
            other = self.runner.run(role, f"cat {HOLDER}", hide=True, warn=True, quiet=True)
            raise MigrateError(
                f"another chatmail-migrate run is working on the {role} host {host}: "
                f"{other.stdout.strip() or 'unknown'}; wait for it to end, or stop that "
                "process. If its machine or network died, the lock stays until sshd drops "
                f"the connection: check that nothing of it runs on {host} any more (ps aux | "
                f"grep chatmail-migrate), then free it there with pkill -f {NAME}"
            )
        self.channels[role] = (channel, started)

    def release(self) -> None:
        for role, (channel, started) in self.channels.items():
            where = f"[{role}: {self.runner.host(role)}]"
            # The host's shell ends on end of input: wait for it, so the lock is free
            # when this run is over (a rerun right after finds it free).
            try:
                channel.shutdown_write()
                channel.status_event.wait(10)
            except (OSError, paramiko.SSHException):
                pass
            channel.close()
            seconds = time.time() - started
            audit.record(self.settings, where, f"flock {LOCK} (held)", started, seconds, 0)
        self.channels.clear()
        self.runner.close()
