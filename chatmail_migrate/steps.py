"""The six documented steps as tasks, ``migrate`` chaining them, and ``status``.

Tasks stay thin: they resolve settings (settings.py), then hand a plain function
to :func:`run_step`, which announces, times, journals and reports failures.
What runs on the hosts is built in commands.py and run through remote.Runner.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

from invoke import Exit, task

from . import commands
from .cmdeploy import cmdeploy_run
from .journal import STEPS, Journal
from .remote import MigrateError, Runner, existing_paths
from .settings import Settings, SettingsError, check_cmdeploy, config_section, resolve

HELP = {
    "old_host": "Old relay host, as you would give it to ssh (alias, name or address); "
    "default: mail_domain from chatmail.ini. Example: --old-host 13.37.13.37",
    "new_host": "New host, as you would give it to ssh. Example: --new-host 13.12.23.42",
    "relay_dir": "Relay checkout holding chatmail.ini and scripts/cmdeploy; default: "
    "$CHATMAIL_RELAY_DIR or the current directory. Example: --relay-dir ~/relay",
    "new_host_from_old": "Address the OLD host uses to reach the new one, when it differs "
    "from yours (e.g. a private network). Example: --new-host-from-old 10.0.0.2",
    "yes": "Do not wait for confirmation that DNS was changed (unattended runs).",
    "restart": "Forget the journal of this relay and start the migration from step 1.",
}


def _help(*names: str) -> dict[str, str]:
    return {name: HELP[name] for name in names}


# Which host each step works on, for its announcement.
ROLES = {
    "disable-mail": "old",
    "copy-data": "old → new",
    "install": "new",
    "fix-ownership": "new",
    "switch-dns": "DNS",
    "enable-mail": "new",
}
# What each step needs, checked before it touches anything or writes the journal.
NEEDS = {
    "disable-mail": ("old_host", "relay_dir"),
    "copy-data": ("old_host", "new_host"),
    "install": ("new_host", "relay_dir"),
    "fix-ownership": ("new_host",),
    "switch-dns": ("old_host", "new_host"),
    "enable-mail": ("new_host", "relay_dir"),
}
USES_CMDEPLOY = ("disable-mail", "install", "enable-mail")
# Which host ``fab -H`` names for each step: the step's own host.
FAB_HOST_ROLE = {name: "old" if name in ("disable-mail", "copy-data") else "new" for name in STEPS}
MIGRATE_CONFIG_KEYS = ("old_host", "new_host", "relay_dir", "new_host_from_old", "yes")


def _where(name: str, s: Settings) -> str:
    return {
        "old": f"on {s.old_host}",
        "new": f"on {s.new_host}",
        "old → new": f"{s.old_host} → {s.new_host}",
        "DNS": f"{s.mail_domain or ''}: {s.old_host} → {s.new_host}",
    }[ROLES[name]]


def run_step(c, name: str, action: Callable[[Settings, Runner], None], **flags) -> None:
    """Run one step: resolve and check its settings, skip it when the journal says
    done (under migrate), announce, time and record it, and on failure say exactly
    where things stand. ``flags`` are the task's command-line values."""
    number = f"[{STEPS.index(name) + 1}/{len(STEPS)}]"
    try:
        settings = resolve(c, role=FAB_HOST_ROLE[name], **flags)
        settings.need(*NEEDS[name])
        if name in USES_CMDEPLOY:
            check_cmdeploy(settings)
    except SettingsError as e:
        raise _fail(e) from None
    journal = Journal.for_settings(settings)
    if journal and journal.steps:
        touched = {"old": ["old_host"], "new": ["new_host"]}.get(
            ROLES[name], ["old_host", "new_host"]
        )
        for key in touched:
            mine, theirs = getattr(journal, key), getattr(settings, key)
            if mine and theirs and mine != theirs:
                raise Exit(
                    f"{number} {name}: the journal {journal.path} records {key.replace('_', ' ')} "
                    f"{mine}, not {theirs}; give --{key.replace('_', '-')} {mine}, "
                    "or start anew with migrate --restart",
                    code=2,
                )
    if journal and config_section(c).get("migrating") and journal.done(name) and not settings.dry:
        print(f"{number} {name}: done {journal.steps[name]['finished']} (journal), skipping")
        return
    print(f"{number} {name} {_where(name, settings)}", flush=True)
    runner = Runner(settings)
    started, clock = time.time(), time.monotonic()
    try:
        action(settings, runner)
    except Exception as e:
        if os.environ.get("CHATMAIL_MIGRATE_DEBUG"):
            raise
        message = str(e)
        if not isinstance(e, (MigrateError, SettingsError)):
            message = (
                f"unexpected {type(e).__name__}: {e} (CHATMAIL_MIGRATE_DEBUG=1 shows a traceback)"
            )
        seconds = time.monotonic() - clock
        stand = ""
        if journal and not settings.dry:
            journal.record_failure(name, message)
            stand = "\n" + journal.where_things_stand()
        raise Exit(
            f"{number} {name} FAILED after {seconds:.1f}s: {message}{stand}", code=1
        ) from None
    except KeyboardInterrupt:
        if journal and not settings.dry:
            journal.record_failure(name, "interrupted")
        raise Exit(
            f"{number} {name} interrupted. " + (journal.where_things_stand() if journal else ""),
            code=130,
        ) from None
    finally:
        runner.close()
    seconds = time.monotonic() - clock
    if journal and not settings.dry:
        journal.adopt_hosts(settings)
        journal.record(name, started, seconds)
    print(f"{number} {name} done in {seconds:.1f}s", flush=True)


def expect_mail_services(runner: Runner, role: str, *, running: bool) -> None:
    result = runner.run(role, commands.service_state_command(), hide=True)
    if runner.dry:
        return
    problems = commands.service_problems(commands.parse_service_states(result.stdout), running)
    if problems:
        raise MigrateError(f"on the {role} host: " + "; ".join(problems))
    state = "active and enabled" if running else "stopped and disabled"
    print(f"  {role} host: postfix and dovecot are {state}")


# -- the steps' work ------------------------------------------------------------


def disable_mail_on_old(settings: Settings, runner: Runner) -> None:
    cmdeploy_run(settings, settings.old_host, disable_mail=True)
    expect_mail_services(runner, "old", running=False)


def copy_data_old_to_new(settings: Settings, runner: Runner) -> None:
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
    script = commands.copy_script(paths, host=host, port=port, user=user, host_key_line=key_line)
    runner.run_script("old", script, forward_agent=True)


def install_on_new(settings: Settings, runner: Runner) -> None:
    cmdeploy_run(settings, settings.new_host, disable_mail=True)
    expect_mail_services(runner, "new", running=False)


def fix_ownership_on_new(settings: Settings, runner: Runner) -> None:
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


def switch_dns_records(settings: Settings, runner: Runner) -> None:
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


def enable_mail_on_new(settings: Settings, runner: Runner) -> None:
    cmdeploy_run(settings, settings.new_host, disable_mail=False)
    expect_mail_services(runner, "new", running=True)


# -- tasks ----------------------------------------------------------------------


def _fail(e: Exception) -> Exit:
    return Exit(f"error: {e}", code=2)


@task(help=_help("old_host", "relay_dir"))
def disable_mail(c, old_host=None, relay_dir=None):
    """Step 1, OLD host: cmdeploy run --disable-mail; check postfix/dovecot are off.

    Examples: fab -H 13.37.13.37 disable-mail | invoke disable-mail --old-host 13.37.13.37
    """
    run_step(c, "disable-mail", disable_mail_on_old, old_host=old_host, relay_dir=relay_dir)


@task(help=_help("old_host", "new_host", "new_host_from_old", "relay_dir"))
def copy_data(c, old_host=None, new_host=None, new_host_from_old=None, relay_dir=None):
    """Step 2, OLD → NEW: tar pipe of mailboxes, TLS, DKIM, echobot, mail queue.

    Runs on the old host with your agent forwarded for that command only.
    Examples: fab -H 13.37.13.37 copy-data --new-host 13.12.23.42 |
    invoke copy-data --old-host 13.37.13.37 --new-host 13.12.23.42
    """
    run_step(
        c,
        "copy-data",
        copy_data_old_to_new,
        old_host=old_host,
        new_host=new_host,
        new_host_from_old=new_host_from_old,
        relay_dir=relay_dir,
    )


@task(help=_help("new_host", "relay_dir"))
def install(c, new_host=None, relay_dir=None):
    """Step 3, NEW host: cmdeploy run --disable-mail; check postfix/dovecot stay off.

    Examples: fab -H 13.12.23.42 install | invoke install --new-host 13.12.23.42
    """
    run_step(c, "install", install_on_new, new_host=new_host, relay_dir=relay_dir)


@task(help=_help("new_host", "relay_dir"))
def fix_ownership(c, new_host=None, relay_dir=None):
    """Step 4, NEW host: owners by name (vmail, opendkim, echobot, root, Postfix spool).

    Examples: fab -H 13.12.23.42 fix-ownership | invoke fix-ownership --new-host 13.12.23.42
    """
    run_step(c, "fix-ownership", fix_ownership_on_new, new_host=new_host, relay_dir=relay_dir)


@task(help=_help("old_host", "new_host", "relay_dir", "yes"))
def switch_dns(c, old_host=None, new_host=None, relay_dir=None, yes=False):
    """Step 5, DNS: print the A/AAAA records to change and wait for your 'done'.

    Examples: fab -H 13.12.23.42 switch-dns --old-host 13.37.13.37 |
    invoke switch-dns --old-host 13.37.13.37 --new-host 13.12.23.42 --yes
    """
    run_step(
        c,
        "switch-dns",
        switch_dns_records,
        old_host=old_host,
        new_host=new_host,
        relay_dir=relay_dir,
        yes=yes or None,
    )


@task(help=_help("new_host", "relay_dir"))
def enable_mail(c, new_host=None, relay_dir=None):
    """Step 6, NEW host: cmdeploy run; check postfix/dovecot are active and enabled.

    Examples: fab -H 13.12.23.42 enable-mail | invoke enable-mail --new-host 13.12.23.42
    """
    run_step(c, "enable-mail", enable_mail_on_new, new_host=new_host, relay_dir=relay_dir)


@task
def migrate_summary(c):
    """Last link of ``migrate``: the table of steps, durations and mail downtime."""
    try:
        s = resolve(c)
    except SettingsError as e:
        raise _fail(e) from None
    if s.dry:
        print("dry run: nothing was changed, nothing journaled")
        return
    journal = Journal.for_settings(s)
    if journal is None:
        return
    print(f"migration of {journal.mail_domain}: {journal.old_host} → {journal.new_host}")
    for number, name in enumerate(STEPS, 1):
        step = journal.steps.get(name, {})
        seconds = f"{step['seconds']:8.1f}s" if "seconds" in step else "  (not done)"
        print(f"  [{number}/{len(STEPS)}] {name:14} {seconds}")
    first, last = journal.steps.get("disable-mail"), journal.steps.get("enable-mail")
    if first and last:
        downtime = last["started_ts"] + last["seconds"] - first["started_ts"]
        print(f"  mail was down for {downtime:.1f}s (disable-mail start to enable-mail end)")
    print(f"  journal: {journal.path}")


@task(
    post=[
        disable_mail,
        copy_data,
        install,
        fix_ownership,
        switch_dns,
        enable_mail,
        migrate_summary,
    ],  # fmt: skip
    help=_help("old_host", "new_host", "relay_dir", "new_host_from_old", "yes", "restart"),
)
def migrate(c, old_host=None, new_host=None, relay_dir=None, new_host_from_old=None, yes=False,
            restart=False):  # fmt: skip
    """Run all six steps in order; a rerun after a failure resumes where it stopped.

    Examples: invoke migrate --new-host 13.12.23.42 |
    fab -H 13.37.13.37 migrate --new-host 13.12.23.42 | invoke --dry migrate --new-host NEW
    """
    # The steps run after this body as Invoke post-tasks, which get no arguments:
    # everything they need is resolved here and handed over through the config.
    try:
        s = resolve(c, role="old", old_host=old_host, new_host=new_host, relay_dir=relay_dir,
                    new_host_from_old=new_host_from_old, yes=yes or None)  # fmt: skip
        s.need("old_host", "new_host", "relay_dir")
        check_cmdeploy(s)
        if config_section(c).get("migrating"):
            raise SettingsError("migrate takes one old host: give a single -H host")
        journal = Journal.for_settings(s)
        assert journal is not None  # relay_dir is known, so is mail_domain
        if restart:
            journal.reset()
        journal.check_hosts(s)
    except SettingsError as e:
        raise _fail(e) from None
    section = c.config.chatmail_migrate
    for key in MIGRATE_CONFIG_KEYS:
        value = getattr(s, key)
        section[key] = str(value) if value is not None and key == "relay_dir" else value
    section["migrating"] = True
    if not s.dry:
        journal.adopt_hosts(s)
        journal.save()
    print(f"migrate {s.mail_domain}: {s.old_host} → {s.new_host}" + (" (dry run)" if s.dry else ""))
    print(f"journal: {journal.path}")
    if journal.done_steps() and not s.dry:
        print(f"resuming at {journal.next_step()}: already done {', '.join(journal.done_steps())} "
              "(--restart starts over)")  # fmt: skip


@task(help=_help("relay_dir"))
def status(c, relay_dir=None):
    """Where the migration of this relay stands (from the journal on this machine).

    Example: invoke status --relay-dir ~/relay
    """
    try:
        s = resolve(c, relay_dir=relay_dir)
    except SettingsError as e:
        raise _fail(e) from None
    journals = [Journal.for_settings(s)] if s.mail_domain else []
    if not s.mail_domain and s.journal_dir.is_dir():
        for path in sorted(s.journal_dir.glob("*.json")):
            s.mail_domain = path.stem
            journals.append(Journal.for_settings(s))
    journals = [j for j in journals if j and j.path.exists()]
    if not journals:
        print(f"no migration journaled in {s.journal_dir}")
        return
    for journal in journals:
        print(f"{journal.mail_domain}: {journal.old_host} → {journal.new_host} ({journal.path})")
        for number, name in enumerate(STEPS, 1):
            step = journal.steps.get(name)
            state = f"done {step['finished']} in {step['seconds']}s" if step else "not done"
            print(f"  [{number}/{len(STEPS)}] {name:14} {state}")
        failures = [e for e in journal.events if e.get("event") == "failed"]
        if failures and journal.next_step():
            last = failures[-1]
            print(f"  last failure: {last['step']} at {last['time']}: {last['message']}")
        print(f"  {journal.where_things_stand()}")
