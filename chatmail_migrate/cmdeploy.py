"""The one place that talks to the relay's ``cmdeploy`` (or the lab's stand-in)."""

from __future__ import annotations

import collections
import os
import shlex
import subprocess

from .remote import MigrateError
from .settings import Settings, check_cmdeploy


def cmdeploy_host(host: str) -> str:
    """What ``--ssh-host`` gets: the host as typed, without ``user@`` and ``:port``.

    cmdeploy always logs in as root and reads the port from the ssh config.
    """
    host = host.rpartition("@")[2]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host


def cmdeploy_run(
    settings: Settings, host: str, *, disable_mail: bool, stages: str | None = None, echo=print
) -> None:
    """Run ``cmdeploy run [--disable-mail] --ssh-host HOST`` from the relay checkout.

    Output streams live; a failure raises with the command, exit code and output tail.
    """
    check_cmdeploy(settings)
    args = [*settings.cmdeploy, "run"]
    if disable_mail:
        args.append("--disable-mail")
    args += ["--ssh-host", cmdeploy_host(host)]
    env = dict(os.environ)
    prefix = ""
    if stages:
        env["CMDEPLOY_STAGES"] = stages
        prefix = f"CMDEPLOY_STAGES={stages} "
    echo(f"[local {settings.relay_dir}] $ {prefix}{shlex.join(args)}")
    if settings.dry:
        return
    tail: collections.deque[str] = collections.deque(maxlen=10)
    try:
        proc = subprocess.Popen(
            args, cwd=settings.relay_dir, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        )  # fmt: skip
    except OSError as e:
        raise MigrateError(f"cannot start cmdeploy `{shlex.join(args)}`: {e}") from None
    assert proc.stdout is not None
    for line in proc.stdout:
        print(f"  cmdeploy| {line}", end="", flush=True)
        tail.append(line.rstrip())
    code = proc.wait()
    if code != 0:
        raise MigrateError(
            f"`{prefix}{shlex.join(args)}` exited {code}; last output: " + " / ".join(tail)
        )
