"""One migration of a relay at a time, also from two machines: a lock on each host.

The lock beside the journal (lock.py) only sees runs on this machine; a colleague's
run, or yours from another laptop, has a journal of its own. So a run that writes
to a host first takes that host's lock: an ``flock`` held by a shell on the host
that waits on its input, as long as the run lasts. The shell ends, and the lock
with it, when the tool closes its channel or its process dies (its connection
closes). It does not end when the tool merely falls silent: a copy the run started
on old goes on without it, and must not meet another run's copy. A lock whose holder
was this machine's run, now dead (its network dropped first), is taken over.
"""

from __future__ import annotations

import getpass
import os
import shlex
import signal
import socket
import time

import paramiko

from . import audit, commands
from .errors import MigrateError
from .lock import holder_text
from .remote import Runner
from .settings import Settings

# Root's own directory: in /run/lock (mode 1777) any local user could take the lock.
LOCK_DIR = "/run/chatmail-migrate"
BUSY = 75  # flock's exit code when the lock is held (-E)
NAME = "chatmail-migrate-lock"  # in the holder's command line, for pkill -f
KEEPALIVE = 15  # seconds: traffic on an idle lock connection, so no NAT forgets it
ANSWER_TIMEOUT = 60  # seconds to wait for the host's shell to say whether it holds it


class LockHeld(MigrateError):
    """Another run holds a host's lock: nothing of this run may touch that host."""


def hold_command(holder: str, lock_dir: str = LOCK_DIR) -> str:
    """Take the lock at once or exit ``BUSY``; then say so and hold it until end of input.

    The holder file gets the shell's pid first, so a lock left by a dead run can be
    freed exactly. The shell alone holds the lock's file (no child inherits it), so
    ending that one process, named by ``NAME`` in its command line, frees the lock.
    """
    script = (
        f"mkdir -p -m 700 {lock_dir} && exec 9>>{lock_dir}/lock || exit; "
        f"flock -n -E {BUSY} 9 || exit; "
        f'printf "%s %s\\n" "$$" "$1" > {lock_dir}/holder; echo held; read -r _'
    )
    return f"sh -c {shlex.quote(script)} {NAME} {shlex.quote(holder)}"


def dead_own_holder(holder_line: str) -> str | None:
    """The host shell's pid when the holder was a run of this machine and user that is
    gone (its pid no longer lives here), else None."""
    shell_pid, _, holder = holder_line.partition(" ")
    words = holder.split()
    me = f"{getpass.getuser()}@{socket.gethostname()}"
    if len(words) < 4 or words[0] != "pid" or words[2:4] != ["of", me]:
        return None
    if not (shell_pid.isdigit() and words[1].isdigit()):
        return None
    try:
        os.kill(int(words[1]), 0)
    except ProcessLookupError:
        return shell_pid
    except PermissionError:
        return None
    return None


class HostLocks:
    """The host locks one run holds, taken as its steps need them, let go at its end."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.runner = Runner(settings, echo=lambda line: None)
        self.holder = holder_text()
        self.channels: dict[str, tuple[paramiko.Channel, float]] = {}

    def hold(self, *roles: str) -> None:
        """Hold the lock of each ``role`` host (again, if the host let go of it).

        Raises LockHeld, one line naming the holder, when another run holds one.
        """
        if self.settings.dry:
            return
        for role in roles:
            held = self.channels.get(role)
            if held and not (held[0].closed or held[0].exit_status_ready()):
                continue
            self.channels.pop(role, None)
            self._take(role)

    def _take(self, role: str) -> None:
        host = self.runner.host(role)
        transport = self.runner.connection(role).client.get_transport()
        transport.set_keepalive(KEEPALIVE)
        for attempt in (1, 2):
            started = time.time()
            channel, code, errors = self._ask_through_interrupt(role, transport)
            if channel:
                self.channels[role] = (channel, started)
                return
            if code != BUSY:
                raise MigrateError(
                    f"cannot take the lock on {role} host {host} ({LOCK_DIR}/lock): "
                    f"exit {code}" + (f": {errors}" if errors else "")
                )
            other = self.runner.run(
                role, f"cat {LOCK_DIR}/holder", hide=True, warn=True, quiet=True
            ).stdout.strip()
            stale = dead_own_holder(other)
            if stale and attempt == 1:
                print(
                    f"  {role} host: taking over the lock a run of this machine left "
                    f"({other.partition(' ')[2]}; that process is gone)"
                )
                # Its copy may still run on old, without anyone to see it end.
                stop = f"; {commands.stop_copy_command()}" if role == "old" else ""
                self.runner.run(role, f"kill {stale}{stop}", hide=True, warn=True, quiet=True)
                continue
            raise LockHeld(
                f"another chatmail-migrate run is working on the {role} host {host}: "
                f"{other.partition(' ')[2] or 'unknown'}; wait for it to end, or stop that "
                "process. If its machine or network died, sshd keeps the lock until it "
                "drops that connection (about 2 hours): once no tar or rsync of that run "
                f"runs on the hosts any more, free it on {host} with pkill -f {NAME}"
            )

    def _ask_through_interrupt(
        self, role: str, transport
    ) -> tuple[paramiko.Channel | None, int, str]:
        """``_ask``, where a ^C waits for the host's answer, then lets go of the lock.

        The host's shell may still be starting (a slow start-up file): left alone, it
        would take the lock after this run ended. A second ^C stops waiting.
        """
        host = self.runner.host(role)
        interrupted: list[int] = []

        def on_interrupt(signum, frame):
            if interrupted:
                raise KeyboardInterrupt
            interrupted.append(signum)
            print(f"\n  interrupted: waiting for the {role} host {host} to answer the lock "
                  "request, to let go of it (^C again: stop waiting)", flush=True)  # fmt: skip

        previous = signal.signal(signal.SIGINT, on_interrupt)
        try:
            answer = self._ask(role, transport)
        finally:
            signal.signal(signal.SIGINT, previous)
        if not interrupted:
            return answer
        channel = answer[0]
        if channel:  # its shell ends at end of input, and the lock with it
            channel.shutdown_write()
            channel.status_event.wait(10)
            channel.close()
        if channel and not channel.exit_status_ready():
            print(f"  the {role} host {host} may hold the lock a while: pkill -f {NAME} there")
        else:
            print(f"  the lock on the {role} host {host} was not kept: nothing held there")
        raise KeyboardInterrupt

    def _ask(self, role: str, transport) -> tuple[paramiko.Channel | None, int, str]:
        """Start the holding shell: its channel when it holds the lock, else None with
        the shell's exit code and error output."""
        try:
            channel = transport.open_session()
            channel.settimeout(ANSWER_TIMEOUT)
            channel.exec_command(hold_command(self.holder))
            # Lines a shell start-up file prints come first: read up to the answer.
            for line in channel.makefile("r"):
                if line.strip() == "held":
                    channel.settimeout(None)
                    return channel, 0, ""
            channel.shutdown_write()
            channel.status_event.wait(10)
            errors = channel.makefile_stderr("r").read().strip()
            code = channel.exit_status if channel.exit_status_ready() else -1
        except (OSError, paramiko.SSHException) as e:
            raise MigrateError(
                f"cannot take the lock on {role} host {self.runner.host(role)}: {e}"
            ) from None
        channel.close()
        return None, code, " / ".join(errors.splitlines()[-2:])

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
            audit.record(self.settings, where, f"flock {LOCK_DIR}/lock (held)", started, seconds, 0)
        self.channels.clear()
        self.runner.close()
