"""The one place that talks to the relay's ``cmdeploy`` (or the lab's stand-in)."""

from __future__ import annotations

import collections
import os
import shlex
import subprocess
import time

from chatmail_migrate import audit
from chatmail_migrate.errors import MigrateError, SettingsError
from chatmail_migrate.hostspec import split_host
from chatmail_migrate.relay import version_tuple
from chatmail_migrate.settings import Settings, check_cmdeploy


def cmdeploy_host(host: str) -> str:
    """What ``--ssh-host`` gets: the host as typed, without ``user@``.

    cmdeploy always logs in as root and takes no port: it hands ``--ssh-host`` to
    pyinfra and OpenSSH as a bare name, which then reach port 22 (or what the ssh
    config says for that name). A port given here would be dropped silently, and
    port 22 of that address may be another machine, so it is refused.
    """
    spec = split_host(host)
    if spec.port:
        raise SettingsError(
            f"{host}: cmdeploy cannot use a port; add a Host entry with HostName and "
            f"Port {spec.port} for it to ~/.ssh/config (both ssh and cmdeploy read it) and "
            "give that alias instead"
        )
    return spec.host


# Since relay 1.8 cmdeploy runs in stages (install, configure, activate), chosen by
# CMDEPLOY_STAGES; older ones ignore the variable and always deploy everything.
STAGES_SINCE = (1, 8)


PREPARE_STAGES = "install,configure"


ACTIVATE_STAGES = "activate"


def stages_supported(settings: Settings) -> tuple[bool, str]:
    """Whether this relay's cmdeploy honours CMDEPLOY_STAGES, and how that was decided."""
    if settings.cmdeploy_stages in ("yes", "no"):
        return settings.cmdeploy_stages == "yes", f"cmdeploy_stages = {settings.cmdeploy_stages}"
    if not settings.relay_dir:
        return False, "no relay checkout"
    source = settings.relay_dir / "cmdeploy" / "src"
    if source.is_dir():
        for path in source.rglob("*.py"):
            if "CMDEPLOY_STAGES" in path.read_text(errors="replace"):
                return True, f"{path.relative_to(settings.relay_dir)} reads CMDEPLOY_STAGES"
    release = settings.relay.release if settings.relay else None
    if release is None:
        return False, "relay release unknown (no git tag in the checkout)"
    if version_tuple(release) >= STAGES_SINCE:
        return True, f"relay {release}"
    return False, f"relay {release} (before 1.8)"


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
    # A CMDEPLOY_STAGES exported in the operator's shell would leak into runs meant
    # to deploy everything (relay >= 1.8 honours it).
    env.pop("CMDEPLOY_STAGES", None)
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
            args,
            cwd=settings.relay_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
    except OSError as e:
        raise MigrateError(f"cannot start cmdeploy `{shlex.join(args)}`: {e}") from None
    assert proc.stdout is not None
    started, clock = time.time(), time.monotonic()
    code = -1  # logged as such if reading its output fails
    try:
        for line in proc.stdout:
            print(f"  cmdeploy| {line}", end="", flush=True)
            tail.append(line.rstrip())
        code = proc.wait()
    finally:
        where = f"[local {settings.relay_dir}]"
        seconds = time.monotonic() - clock
        audit.record(settings, where, prefix + shlex.join(args), started, seconds, code)
    if code != 0:
        raise MigrateError(
            f"`{prefix}{shlex.join(args)}` exited {code}; last output: " + " / ".join(tail)
        )
