"""One migration of a relay at a time, also from two machines: a lock on each host.

The lock beside the journal (lock.py) only sees runs on this machine; a colleague's
run, or yours from another laptop, has a journal of its own. So a run that writes
to a host first takes that host's lock: an ``flock`` held by a shell on the host
that waits on its input, as long as the run lasts. The shell ends, and the lock
with it, when the tool closes its channel or its process dies (its connection
closes). It does not end when the tool merely falls silent: a copy the run started
on old goes on without it, and must not meet another run's copy. Every run has an
id of its own (lock.RUN_ID), in its journal and in the locks it holds; a lock whose
holder is a run this machine's journal recorded, now dead (its network dropped
first), is taken over, and that run's copy stopped (its systemd unit, by the id).
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
import signal
import socket
import time
from dataclasses import dataclass

import paramiko

from chatmail_migrate import audit
from chatmail_migrate.errors import MigrateError
from chatmail_migrate.hosts import copy_commands
from chatmail_migrate.hosts.runner import Runner
from chatmail_migrate.journal import Journal
from chatmail_migrate.lock import RUN_ID, holder_text
from chatmail_migrate.settings import Settings

# Root's own directory: in /run/lock (mode 1777) any local user could take the lock.
LOCK_DIR = "/run/chatmail-migrate"


BUSY = 75  # flock's exit code when the lock is held (-E)


NAME = "chatmail-migrate-lock"  # in the holder's command line, for pkill -f


KEEPALIVE = 15  # seconds: traffic on an idle lock connection, so no NAT forgets it


# Connect timeouts to wait for the host's shell to say whether it holds it (60 s by default).
ANSWER_TIMEOUTS = 6


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


@dataclass
class Holder:
    """A host lock's holder file: its shell on the host, and the run it holds it for."""

    shell: str
    pid: str
    who: str
    run: str
    text: str


HOLDER = re.compile(r"(\d+) (pid (\d+) of (\S+) \(run ([0-9a-f]+)\) since .*)")


def parse_holder(line: str) -> Holder | None:
    match = HOLDER.fullmatch(line.strip())
    if not match:
        return None
    shell, text, pid, who, run = match.groups()
    return Holder(shell, pid, who, run, text)


def dead_run_of(holder: Holder, journal: Journal | None) -> bool:
    """Whether the holder is a run this journal recorded, of this machine and user, whose
    process is gone. Not a user@hostname alone: a cloned machine has the same."""
    runs = {e.get("id") for e in journal.events if e.get("event") == "run"} if journal else set()
    if holder.run not in runs:
        return False
    if holder.who != f"{getpass.getuser()}@{socket.gethostname()}":
        return False
    try:
        os.kill(int(holder.pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def end_shell_command(holder: Holder) -> str:
    """End the holder's shell, once /proc shows it is that run's lock shell, and wait for
    it: its pid alone may name another process by now."""
    p = holder.shell
    return (
        f"if grep -qaF -- {shlex.quote(f'(run {holder.run})')} /proc/{p}/cmdline && "
        f"grep -qaF {NAME} /proc/{p}/cmdline; then kill {p}; "
        f"for i in $(seq 50); do kill -0 {p} 2>/dev/null || break; sleep 0.1; done; fi"
    )


class HostLocks:
    """The host locks one run holds, taken as its steps need them, let go at its end."""

    def __init__(self, settings: Settings, journal: Journal | None = None):
        self.settings = settings
        self.journal = journal
        self.runner = Runner(settings, echo=lambda line: None)
        self.holder = holder_text()
        self.channels: dict[str, tuple[paramiko.Channel, float]] = {}
        self.answer_timeout = ANSWER_TIMEOUTS * settings.connect_timeout

    def hold(self, *roles: str) -> None:
        """Hold the lock of each ``role`` host (again, if the host let go of it).

        Raises LockHeld, one line naming the holder, when another run holds one;
        MigrateError, one line, when it cannot be taken for another reason, twice.
        """
        if self.settings.dry:
            return
        for role in roles:
            held = self.channels.get(role)
            if held and not (held[0].closed or held[0].exit_status_ready()):
                continue
            if held:
                print(f"  {role} host: this run's lock there was lost: taking it again", flush=True)
                # Its connection may be what was lost: a cached one would be dead.
                self.runner.drop(role)
            self.channels.pop(role, None)
            self.record_run()
            try:
                self._take(role)
            except LockHeld:
                raise
            except MigrateError as e:
                print(f"  {e}: trying once more, on a new connection", flush=True)
                self.runner.drop(role)
                self._take(role)

    def record_run(self) -> None:
        """This run's id in the journal, before any lock names it: only then can a rerun
        of this journal take over what it leaves on a host."""
        if self.journal and not any(
            e.get("event") == "run" and e.get("id") == RUN_ID for e in self.journal.events
        ):
            self.journal.note("run", id=RUN_ID, holder=self.holder)

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
            holder = parse_holder(other)
            if holder and attempt == 1 and holder.run == RUN_ID:
                # This run's own shell, whose answer came after the run stopped waiting,
                # or whose connection this run lost and the host has not noticed yet.
                print(f"  {role} host: ending this run's earlier lock shell there")
                self.runner.run(role, end_shell_command(holder), hide=True, warn=True, quiet=True)
                continue
            if holder and attempt == 1 and dead_run_of(holder, self.journal):
                print(
                    f"  {role} host: taking over the lock a run of this machine left "
                    f"({holder.text}; that process is gone)"
                )
                # Its copy may still run on old, without anyone to see it end: that run's
                # own unit, and nothing else.
                stop = f"; {copy_commands.stop_copy_command(holder.run)}" if role == "old" else ""
                self.runner.run(
                    role, end_shell_command(holder) + stop, hide=True, warn=True, quiet=True
                )
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
            print(
                f"\n  interrupted: waiting for the {role} host {host} to answer the lock "
                "request, to let go of it (^C again: stop waiting)",
                flush=True,
            )

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
        channel = None
        try:
            channel = transport.open_session()
            channel.settimeout(self.answer_timeout)
            channel.exec_command(hold_command(self.holder))
            # Lines a shell start-up file prints come first: read up to the answer.
            for line in channel.makefile("r"):
                if line.strip() == "held":
                    channel.settimeout(None)
                    return channel, 0, ""
            channel.shutdown_write()
            channel.status_event.wait(10)
            # read() gives bytes whatever the mode (lines come decoded).
            errors = channel.makefile_stderr("r").read().decode(errors="replace").strip()
            code = channel.exit_status if channel.exit_status_ready() else -1
        except (OSError, paramiko.SSHException) as e:
            # A shell that answers later finds its input closed and ends; one that took
            # the lock first names this run, which ends it (_take).
            if channel is not None:
                channel.close()
            reason = f"no answer in {self.answer_timeout}s" if isinstance(e, TimeoutError) else e
            raise MigrateError(
                f"cannot take the lock on {role} host {self.runner.host(role)}: {reason}"
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
