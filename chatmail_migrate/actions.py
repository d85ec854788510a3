"""What each step does on the hosts: plain functions of (settings, runner, journal).

The tasks in steps.py wrap these with announcements, the journal and rollback.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from . import commands, verify
from .cmdeploy import cmdeploy_run
from .journal import Journal
from .remote import MigrateError, Runner, existing_paths
from .settings import Settings


def expect_mail_services(runner: Runner, role: str, *, running: bool) -> None:
    result = runner.run(role, commands.service_state_command(), hide=True)
    if runner.dry:
        return
    problems = commands.service_problems(commands.parse_service_states(result.stdout), running)
    if problems:
        raise MigrateError(f"on the {role} host: " + "; ".join(problems))
    state = "active and enabled" if running else "stopped and disabled"
    print(f"  {role} host: postfix and dovecot are {state}")


def disable_mail_on_old(settings: Settings, runner: Runner, journal: Journal | None = None) -> None:
    cmdeploy_run(settings, settings.old_host, disable_mail=True)
    expect_mail_services(runner, "old", running=False)


def copy_data_old_to_new(
    settings: Settings, runner: Runner, journal: Journal | None = None
) -> None:
    if not settings.dry and not os.environ.get("SSH_AUTH_SOCK"):
        raise MigrateError(
            "copy-data needs an ssh-agent (SSH_AUTH_SOCK) holding a key the new host accepts: "
            "run ssh-agent and ssh-add first"
        )
    paths = commands.COPY_PATHS
    if not settings.dry:
        paths = existing_paths(runner, "old", commands.COPY_PATHS)
        for path in commands.COPY_PATHS:
            if path not in paths:
                print(f"  skipping {path}: not on the old host")
        if "/home/vmail/mail" not in paths:
            raise MigrateError(
                f"the old host {settings.old_host} has no /home/vmail/mail: is it a chatmail relay?"
            )
    host, port, user = runner.address("new")
    if settings.new_host_from_old:
        host = settings.new_host_from_old
    # Pin the key this machine's own connection to the new host sees.
    key_line = runner.host_key_line("new", commands.NEW_HOST_ALIAS)
    # Data from an earlier attempt (or, with --force, any) is replaced, never merged.
    replace = settings.force or bool(journal and journal.copy_attempted(settings.new_host))
    if replace:
        print(f"  replacing what an earlier attempt left on {settings.new_host}")
    if journal and not settings.dry:
        journal.record_start("copy-data", settings.new_host)
    script = commands.copy_script(
        paths, host=host, port=port, user=user, host_key_line=key_line, replace=replace
    )
    # Invoke waits for a remote command to end even after ^C, and without a pty the
    # remote side never hears of it: so on ^C, stop the copy on old ourselves.
    interrupted = []

    def on_interrupt(signum, frame):
        if interrupted:
            raise KeyboardInterrupt  # a second ^C: stop waiting
        interrupted.append(signum)
        print("  interrupted: stopping the copy on the old host", flush=True)
        stop_copy_on_old(settings)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        runner.run_script("old", script, forward_agent=True)
    except MigrateError:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt


def stop_copy_on_old(settings: Settings) -> None:
    """After an interrupt, stop the pipe still running on the old host (new connection)."""
    runner = Runner(settings)
    try:
        out = runner.run("old", commands.stop_copy_command(), hide=True, quiet=True, warn=True)
        if "stopped" in out.stdout:
            print("  stopped the copy still running on the old host")
    except MigrateError as e:
        print(f"  could not stop the copy on the old host: {e}")
    finally:
        runner.close()


def install_on_new(settings: Settings, runner: Runner, journal: Journal | None = None) -> None:
    cmdeploy_run(settings, settings.new_host, disable_mail=True)
    expect_mail_services(runner, "new", running=False)


def fix_ownership_on_new(
    settings: Settings, runner: Runner, journal: Journal | None = None
) -> None:
    paths = commands.COPY_PATHS
    if not settings.dry:
        paths = existing_paths(runner, "new", commands.COPY_PATHS)
    runner.run_script("new", commands.fix_ownership_script(paths))
    result = runner.run("new", commands.ownership_check_command(paths), hide=True)
    if settings.dry:
        return
    sections = commands.parse_sections(result.stdout)
    problems = []
    if sections.get("orphans"):
        problems.append("files owned by ids with no name: " + ", ".join(sections["orphans"][:5]))
    dkim = sections.get("dkim", [])
    if dkim and dkim[0] != "opendkim 600":
        problems.append(f"DKIM key is '{dkim[0]}' (owner mode), expected 'opendkim 600'")
    check = commands.postfix_check_problems(sections.get("postfix check", []))
    if check:
        problems.append("postfix check: " + " / ".join(check[:5]))
    if problems:
        raise MigrateError("; ".join(problems))
    print("  owners fixed: no orphaned ids, DKIM key opendkim 0600, postfix check clean")


def _global_addresses(runner: Runner, role: str) -> dict[str, list[str]]:
    out = runner.run(role, commands.global_addresses_command(), hide=True, quiet=True).stdout
    found: dict[str, list[str]] = {"A": [], "AAAA": []}
    for link in json.loads(out or "[]"):
        for addr in link.get("addr_info", []):
            if addr.get("local"):
                found["A" if addr.get("family") == "inet" else "AAAA"].append(addr["local"])
    return found


def switch_dns_records(settings: Settings, runner: Runner, journal: Journal | None = None) -> None:
    name = f"{settings.mail_domain or '<mail_domain>'}."
    if settings.dry:
        old = {"A": ["<old IPv4>"], "AAAA": ["<old IPv6>"]}
        new = {"A": ["<new IPv4>"], "AAAA": ["<new IPv6, if any>"]}
        runner.run("old", commands.global_addresses_command())
        runner.run("new", commands.global_addresses_command())
    else:
        old, new = _global_addresses(runner, "old"), _global_addresses(runner, "new")
    if not new["A"] and not new["AAAA"]:
        raise MigrateError(f"the new host {settings.new_host} has no global address")
    print("  Change these DNS records (TTL 300 until the move is over):")
    print(f"  {'name':30} {'type':5} {'old value':24} new value")
    for rtype in ("A", "AAAA"):
        if not new[rtype]:
            if old[rtype]:
                print(
                    f"  {name:30} {rtype:5} {', '.join(old[rtype]):24} (delete: new host has none)"
                )
            continue
        print(
            f"  {name:30} {rtype:5} {', '.join(old[rtype]) or '(none)':24} {', '.join(new[rtype])}"
        )
    if settings.yes:
        print("  --yes: not waiting for confirmation")
        return
    if settings.dry:
        print("  (would wait for you to type 'done')")
        return
    if not sys.stdin.isatty():
        raise MigrateError(
            "switch-dns waits for you to confirm the DNS change, but there is no terminal; "
            "change the records, then rerun with --yes"
        )
    while input("  Type 'done' once the records are changed: ").strip().lower() != "done":
        pass


def enable_mail_on_new(settings: Settings, runner: Runner, journal: Journal | None = None) -> None:
    cmdeploy_run(settings, settings.new_host, disable_mail=False)
    expect_mail_services(runner, "new", running=True)


def verify_trees(settings: Settings, runner: Runner, journal: Journal | None = None) -> None:
    """List the copied trees on both hosts (one command each) and compare them."""
    paths = commands.COPY_PATHS
    command = verify.listing_command(paths, settings.checksum)
    old_out, new_out = runner.capture("old", command), runner.capture("new", command)
    if settings.dry:
        return
    report = verify.compare(verify.parse_listing(old_out), verify.parse_listing(new_out))
    what = "type, size, mode, mtime, symlink target, owner and group"
    what += ", content (sha256)" if settings.checksum else " (--checksum adds content)"
    print(f"  compared {what}")
    if not report.ok:
        raise MigrateError("verify: " + report.summary())
    print(f"  {report.summary()}")


def rollback_on_old(settings: Settings, runner: Runner, journal: Journal | None = None) -> None:
    """Re-enable mail on the old host, as the relay ran before the migration."""
    cmdeploy_run(settings, settings.old_host, disable_mail=False)
    expect_mail_services(runner, "old", running=True)
