"""One migration of a relay at a time, from this machine.

A second run (an operator whose terminal dropped, rerunning while the first goes
on) would stop the first one's receiving tar, roll back under its copy, and race
it for the journal. The lock is an ``flock`` on a file beside the journal: the
kernel releases it when the process ends, also after a crash or ``kill -9``. The
file says who holds it, for the run that is refused.
"""

from __future__ import annotations

import fcntl
import getpass
import os
import secrets
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from chatmail_migrate.errors import MigrateError
from chatmail_migrate.settings import Settings

# This run's own name, in the journal and in every lock it holds: a user@hostname is no
# name of a machine (containers and cloned VMs share theirs), nor is a pid of another's.
RUN_ID = secrets.token_hex(8)


def holder_text() -> str:
    """Who holds a lock: for the run that is refused."""
    return (
        f"pid {os.getpid()} of {getpass.getuser()}@{socket.gethostname()} (run {RUN_ID}) "
        f"since {time.strftime('%Y-%m-%d %H:%M:%S%z')}, running `{shlex.join(sys.argv)}`"
    )


@contextmanager
def migration_lock(settings: Settings) -> Iterator[None]:
    """Hold the relay's lock while the body runs; refuse in one line if it is held."""
    if settings.dry or not settings.mail_domain:
        yield
        return
    settings.journal_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = settings.journal_dir / f"{settings.mail_domain}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            raise MigrateError(
                f"another chatmail-migrate run is migrating {settings.mail_domain}: {holder}; "
                "wait for it to end (its terminal may be gone: see `invoke status`), or stop "
                f"that process, then rerun (lock: {path})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder_text().encode() + b"\n", 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
