"""Moving files between the hosts: the copy pipe run on old (ssh to new,
agent or copy key, progress), and the checks it needs first.
"""

from __future__ import annotations

import os
import shlex
import signal

from chatmail_migrate.errors import MigrateError
from chatmail_migrate.hosts import copy_commands, copy_key
from chatmail_migrate.hosts.progress import CopyProgress
from chatmail_migrate.hosts.runner import Runner, have_program
from chatmail_migrate.hostspec import split_host
from chatmail_migrate.lock import RUN_ID
from chatmail_migrate.settings import Settings


def need_agent(settings: Settings, step: str) -> None:
    if settings.copy_key == "ephemeral":
        return  # old logs in to new with a key made for the copy
    if not settings.dry and not os.environ.get("SSH_AUTH_SOCK"):
        raise MigrateError(
            f"{step} needs an ssh-agent (SSH_AUTH_SOCK) holding a key the new host accepts: "
            "run ssh-agent and ssh-add first"
        )


def compression(settings: Settings, runner: Runner) -> str | None:
    """zstd when both hosts have it, else ssh's own zlib; None unless asked for."""
    if not settings.compress:
        return None
    if settings.dry or (
        have_program(runner, "old", "zstd") and have_program(runner, "new", "zstd")
    ):
        print("  compressing on the wire with zstd (--compress)")
        return "zstd"
    print("  compressing on the wire with ssh -C (--compress; zstd is missing on a host)")
    return "ssh"


def need_rsync(settings: Settings, runner: Runner, step: str) -> None:
    if settings.dry:
        return
    for role in ("old", "new"):
        if not have_program(runner, role, "rsync"):
            raise MigrateError(
                f"{step} needs rsync on both hosts, and the {role} host {runner.host(role)} "
                "has none: apt install rsync there"
            )


def copy_target(settings: Settings, runner: Runner) -> dict:
    """Where the old host sends to, and the key it must see there (this machine's view)."""
    host, port, user = runner.address("new")
    if settings.new_host_from_old:
        other = split_host(settings.new_host_from_old)
        host, port, user = other.host, other.port or port, other.user or user
    # Pin the keys this machine trusts for the new host.
    key_line = runner.host_key_line("new", copy_commands.NEW_HOST_ALIAS)
    target = {"host": host, "port": port, "user": user, "host_key_line": key_line}
    if settings.copy_key == "ephemeral":
        target["identity"] = copy_key.KEY
    return target


def copy_to_new(
    settings: Settings, runner: Runner, paths: list[str] | None = None, **options
) -> list[dict]:
    """Build a copy (a pre-sync without ``paths``), authorize old's key for it under
    --copy-key ephemeral, and run it on old."""
    target = copy_target(settings, runner)
    if paths is None:
        script = copy_commands.presync_script(**target, **options)
        receives = copy_commands.presync_receives(**options)
    else:
        script = copy_commands.copy_script(paths, **target, **options)
        receives = copy_commands.copy_receives(paths, **options)
    with copy_key.authorized(settings, runner, receives, target):
        return run_copy(settings, runner, script)


def run_copy(settings: Settings, runner: Runner, script: str) -> list[dict]:
    """Run a copy script on old (the agent forwarded unless --copy-key ephemeral),
    showing its progress.

    Invoke waits for a remote command to end even after ^C, and without a pty the
    remote side never hears of it: so on ^C, stop the copy on old ourselves.
    """
    interrupted = []

    def on_interrupt(signum, frame):
        if interrupted:
            raise KeyboardInterrupt  # a second ^C: stop waiting
        interrupted.append(signum)
        print("\n  interrupted: stopping the copy on the old host", flush=True)
        stop_copy_on_old(settings)

    progress = CopyProgress(interval=settings.progress_interval)
    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        # With a copy key of its own, old's ssh needs no agent.
        agent = settings.copy_key != "ephemeral"
        runner.stream(
            "old",
            f"{copy_commands.COPY_STOPPED}\n{script}",
            progress.feed,
            forward_agent=agent,
            launcher=copy_commands.copy_launcher(RUN_ID, agent=agent),
        )
    except MigrateError:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt
    return progress.summaries


def stop_copy_on_old(settings: Settings) -> None:
    """After an interrupt, stop this run's copy still running on old (new connection)."""
    runner = Runner(settings)
    try:
        stop = copy_commands.stop_copy_command(RUN_ID)
        out = runner.run("old", stop, hide=True, quiet=True, warn=True)
        if "stopped" in out.stdout:
            print("  stopped the copy still running on the old host")
    except MigrateError as e:
        print(f"  could not stop the copy on the old host: {e}")
    finally:
        runner.close()


def relay_users_exist(settings: Settings, runner: Runner) -> bool:
    """Whether the users owning the relay's trees exist on new (install made them).

    Then tar and rsync give every file its owner by name as they write it, and no
    owner list needs to be read on old beside the copy.
    """
    users = ["vmail", "opendkim"]
    if not settings.relay or settings.relay.has_echobot:
        users.append("echobot")
    result = runner.run(
        "new",
        f"for u in {' '.join(users)}; do id -u $u >/dev/null 2>&1 || echo $u; done",
        hide=True,
    )
    return not settings.dry and not result.stdout.split()


def with_link_targets(settings: Settings, runner: Runner, paths: list[str]) -> list[str]:
    """``paths`` plus, for the external TLS files among them, what their symlinks point
    at (certbot's live/ names are links into archive/): tar carries links as links."""
    external = [p for p in paths if settings.relay and p in settings.relay.tls_external]
    if not external or settings.dry:
        return paths
    quoted = " ".join(shlex.quote(p) for p in external)
    out = runner.run("old", f"readlink -e {quoted}", hide=True, quiet=True, warn=True).stdout
    targets = [t for t in out.split() if t not in paths]
    return paths + sorted(set(targets))
