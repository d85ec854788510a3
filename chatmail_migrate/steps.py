"""The migration's tasks: the documented steps, verify, preflight, rollback, migrate.

Tasks stay thin: :func:`run_step` resolves their settings (settings.py), checks
them, then runs a plain function from actions.py, announcing, timing and
journaling it; on failure it says where things stand and, under ``migrate``,
rolls back while DNS still points at the old host.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from invoke import Exit

from . import actions, audit, dnscheck
from . import preflight as checks
from .cli import debugging, paint, task
from .cmdeploy import cmdeploy_host, stages_supported
from .journal import STEPS, Journal, plan, report
from .remote import MigrateError, Runner, connect
from .settings import Settings, SettingsError, check_cmdeploy, config_section, resolve

HELP = {
    "old_host": "Old relay host, as you would give it to ssh (alias, name or address); "
    "default: mail_domain from chatmail.ini. Example: --old-host 13.37.13.37",
    "new_host": "New host, as you would give it to ssh. Example: --new-host 13.12.23.42",
    "relay_dir": "Relay checkout holding chatmail.ini and scripts/cmdeploy; default: "
    "$CHATMAIL_RELAY_DIR or the current directory. Example: --relay-dir ~/relay",
    "new_host_from_old": "Address the OLD host uses to reach the new one, when it differs "
    "from yours (e.g. a private network). Example: --new-host-from-old 10.0.0.2",
    "yes": "Do not wait for confirmation that DNS was changed (unattended runs). Example: --yes",
    "restart": "Forget the journal of this relay and start the migration from step 1. "
    "Example: --restart",
    "force": "Replace mailboxes the new host already holds for this domain (preflight "
    "refuses otherwise). "
    "Example: --force",
    "rollback": "When a step fails before DNS is switched, re-enable mail on the old host "
    "(default); --no-rollback leaves it off, to resume at the failed step. "
    "Example: --no-rollback",
    "accept_new_host_keys": "Trust host keys not yet in known_hosts and record them there "
    "(changed keys are always refused). "
    "Example: --accept-new-host-keys",
    "checksum": "Also compare file contents (sha256) on both hosts: slower, thorough. "
    "Example: --checksum",
    "nameserver": "Authoritative nameservers to ask, ADDR[:PORT],... (split horizon, tests); "
    "default: found through your resolver. Example: --nameserver 192.0.2.53",
    "dns_timeout": "Seconds to wait for every nameserver to answer the new address (default 3600). "
    "Example: --dns-timeout 600",
    "new_address": "The new host's public address(es), when they are not on its own "
    "interfaces (NAT). Example: --new-address 13.12.23.42,2001:db8::42",
    "wait": "Wait for every nameserver to answer the new address (default); --no-wait does not. "
    "Example: --no-wait",
    "wait_caches": "After the switch, also wait until resolver caches can no longer hold "
    "the old address (the old TTL). "
    "Example: --wait-caches",
    "presync": "Copy the mailboxes while the old relay still serves, so the copy during the "
    "downtime sends only what changed since (rsync, deletions mirrored). "
    "Example: --presync",
    "compress": "Compress the copy on the wire (zstd when both hosts have it, else ssh -C): "
    "for slow links only. "
    "Example: --compress",
    "update_known_hosts": "Replace the old host's key for the mail domain in your "
    "known_hosts with the new host's key (verified by the tool's own connection). "
    "Example: --update-known-hosts",
}


def _help(*names: str) -> dict[str, str]:
    return {name: HELP[name] for name in names}


# Which host each step works on, for its announcement.
ROLES = {
    "presync": "old → new",
    "disable-mail": "old",
    "copy-data": "old → new",
    "install": "new",
    "fix-ownership": "new",
    "verify": "old ↔ new",
    "switch-dns": "DNS",
    "enable-mail": "new",
}
# What each step needs, checked before it touches anything or writes the journal.
NEEDS = {
    "presync": ("old_host", "new_host", "relay_dir"),
    "disable-mail": ("old_host", "relay_dir"),
    "copy-data": ("old_host", "new_host"),
    "install": ("new_host", "relay_dir"),
    "fix-ownership": ("new_host",),
    "verify": ("old_host", "new_host"),
    "switch-dns": ("old_host", "new_host", "relay_dir"),
    "enable-mail": ("new_host", "relay_dir"),
}
USES_CMDEPLOY = ("disable-mail", "install", "enable-mail")
# Which host ``fab -H`` names for each step: the step's own host.
FAB_HOST_ROLE = {
    name: "old" if name in ("presync", "disable-mail", "copy-data", "verify") else "new"
    for name in ["presync", *STEPS]
}
# What migrate hands to its chained steps through the config.
MIGRATE_CONFIG_KEYS = (
    "nameservers",
    "dns_timeout",
    "new_addresses",
    "dns_wait",
    "wait_caches",
    "update_known_hosts",
    "old_host",
    "new_host",
    "relay_dir",
    "new_host_from_old",
    "yes",
    "force",
    "rollback",
    "accept_new_host_keys",
    "checksum",
    "presync",
    "compress",
    "cmdeploy_stages",
)


def _where(name: str, s: Settings) -> str:
    return {
        "old": f"on {s.old_host}",
        "new": f"on {s.new_host}",
        "old → new": f"{s.old_host} → {s.new_host}",
        "old ↔ new": f"{s.old_host} ↔ {s.new_host}",
        "DNS": f"{s.mail_domain or ''}: {s.old_host} → {s.new_host}",
    }[ROLES[name]]


def _fail(e: Exception) -> Exit:
    return Exit(f"error: {e}", code=2)


def _settings(c, role: str | None, needs=(), cmdeploy: bool = False, **flags) -> Settings:
    """Resolve and check a task's settings; bad input exits with one line, nothing touched."""
    try:
        settings = resolve(c, role=role, **flags)
        settings.need(*needs)
        if cmdeploy:
            check_cmdeploy(settings)
            for name in ("old_host", "new_host"):
                if name in needs:
                    cmdeploy_host(getattr(settings, name))  # refuses a port it would drop
        if "old_host" in needs:
            pin_old_host(settings)
    except SettingsError as e:
        raise _fail(e) from None
    return settings


def pin_old_host(settings: Settings) -> None:
    """Turn the default old host (the mail domain) into the address DNS gives now.

    Asked of the authoritative servers, once: after the switch the name points at
    the new host. A ``Host`` entry for the domain in the ssh config is kept as is.
    """
    if not settings.old_host_from_domain or settings.dry:
        return
    domain = settings.mail_domain or ""
    if connect(settings, domain).host != domain:
        return
    try:
        address = dnscheck.resolve_host(domain, dnscheck.parse_nameservers(settings.nameservers))
    except MigrateError as e:
        raise SettingsError(f"cannot find the old host by DNS: {e}; give --old-host") from None
    print(f"old host: {domain} points at {address} (asked its authoritative nameservers)")
    settings.old_host = address
    settings.old_host_from_domain = False


def _check_journal_hosts(name: str, settings: Settings, journal: Journal | None) -> None:
    if not (journal and journal.steps):
        return
    touched = {"old": ["old_host"], "new": ["new_host"]}.get(ROLES[name], ["old_host", "new_host"])
    for key in touched:
        mine, theirs = getattr(journal, key), getattr(settings, key)
        if mine and theirs and mine != theirs:
            raise Exit(
                f"{name}: the journal {journal.path} records {key.replace('_', ' ')} {mine}, "
                f"not {theirs}; give --{key.replace('_', '-')} {mine}, or start anew with "
                "migrate --restart",
                code=2,
            )


def _after_failure(c, name: str, settings: Settings, journal: Journal | None) -> str:
    """Roll back under migrate while DNS still points at old; say where things stand."""
    if not journal or settings.dry:
        return ""
    mail_off = journal.done("disable-mail") or name == "disable-mail"
    if not (config_section(c).get("migrating") and mail_off):
        return journal.where_things_stand()
    if journal.done("switch-dns") or journal.dns_change_confirmed():
        return (
            "Not rolling back: DNS already points at the new host. " + journal.where_things_stand()
        )
    if not settings.rollback:
        return "--no-rollback: mail stays off on the old host. " + journal.where_things_stand()
    print("rolling back: re-enabling mail on the old host (--no-rollback turns this off)")
    runner = Runner(settings)
    try:
        actions.rollback_on_old(settings, runner, journal)
    except (MigrateError, SettingsError) as e:
        return (
            f"ROLLBACK FAILED: {e}. Mail is DOWN on the old host: fix that, then run "
            "`rollback` (or cmdeploy run --ssh-host OLD)."
        )
    finally:
        runner.close()
    journal.record_rollback()
    return (
        "Rolled back: mail runs on the old host again, whose data was never changed. "
        "Fix the cause, then rerun migrate: it starts over and replaces the new host's copy."
    )


def run_step(c, name: str, action: Callable[..., None], **flags) -> None:
    """Run one step: check its settings, skip it when the journal says done (under
    migrate), announce, time and record it, and on failure say exactly where things
    stand. ``flags`` are the task's command-line values."""
    settings = _settings(c, FAB_HOST_ROLE[name], NEEDS[name], name in USES_CMDEPLOY, **flags)
    journal = Journal.for_settings(settings)
    order = journal.plan if journal else STEPS
    number = f"[{order.index(name) + 1}/{len(order)}]" if name in order else f"[{name}]"
    _check_journal_hosts(name, settings, journal)
    # A pre-sync is worth repeating, until the downtime has begun.
    done = journal and journal.done("disable-mail" if name == "presync" else name)
    if done and config_section(c).get("migrating") and not settings.dry:
        when = journal.steps.get(name, {}).get("finished", "before the downtime")
        print(f"{number} {name}: done {when} (journal), skipping")
        return
    print(paint(f"{number} {name} {_where(name, settings)}", "bold"), flush=True)
    audit.note(settings, f"{number} {name} {_where(name, settings)}: started")
    runner = Runner(settings)
    started, clock = time.time(), time.monotonic()
    try:
        action(settings, runner, journal)
    except (Exception, KeyboardInterrupt) as e:
        if debugging() and not isinstance(e, KeyboardInterrupt):
            raise
        runner.close()
        if isinstance(e, KeyboardInterrupt):
            message, code = "interrupted", 130
        elif isinstance(e, (MigrateError, SettingsError)):
            message, code = str(e), 1
        else:
            message = f"unexpected {type(e).__name__}: {e} (--debug shows the traceback)"
            code = 1
        if journal and not settings.dry:
            journal.record_failure(name, message)
        stand = _after_failure(c, name, settings, journal)
        seconds = time.monotonic() - clock
        audit.note(settings, f"{number} {name} FAILED after {seconds:.1f}s: {message}")
        failed = paint(f"{number} {name} FAILED", "red", sys.stderr)
        raise Exit(f"{failed} after {seconds:.1f}s: {message}\n{stand}", code) from None
    finally:
        runner.close()
    seconds = time.monotonic() - clock
    if journal and not settings.dry:
        journal.adopt_hosts(settings)
        journal.record(name, started, seconds)
    audit.note(settings, f"{number} {name} done in {seconds:.1f}s")
    print(f"{number} {name} {paint('done', 'green')} in {seconds:.1f}s", flush=True)


@task(help=_help("old_host", "relay_dir"))
def disable_mail(c, old_host=None, relay_dir=None):
    """Step 1, OLD host: cmdeploy run --disable-mail; check postfix/dovecot are off.

    Examples: fab -H 13.37.13.37 disable-mail | invoke disable-mail --old-host 13.37.13.37
    """
    run_step(c, "disable-mail", actions.disable_mail_on_old, old_host=old_host, relay_dir=relay_dir)


@task(help=_help("old_host", "new_host", "new_host_from_old", "relay_dir", "compress"))
def presync(
    c, old_host=None, new_host=None, new_host_from_old=None, relay_dir=None, compress=False
):
    """Before step 1, OLD → NEW: rsync the mailboxes while the old relay still serves.

    Repeat it until little changes; copy-data then sends only the difference and
    mirrors deletions. Runs on old with your agent forwarded for that command only.
    Examples: fab -H 13.37.13.37 presync --new-host 13.12.23.42 |
    invoke presync --old-host 13.37.13.37 --new-host 13.12.23.42
    """
    run_step(
        c,
        "presync",
        actions.presync_old_to_new,
        old_host=old_host,
        new_host=new_host,
        new_host_from_old=new_host_from_old,
        relay_dir=relay_dir,
        compress=compress or None,
    )


@task(help=_help("old_host", "new_host", "new_host_from_old", "relay_dir", "force", "compress"))
def copy_data(
    c,
    old_host=None,
    new_host=None,
    new_host_from_old=None,
    relay_dir=None,
    force=False,
    compress=False,
):
    """Step 2, OLD → NEW: tar pipe of mailboxes, TLS, DKIM, echobot, mail queue.

    After a presync the mailboxes go by rsync (changes only, deletions mirrored).
    Runs on the old host with your agent forwarded for that command only.
    Examples: fab -H 13.37.13.37 copy-data --new-host 13.12.23.42 |
    invoke copy-data --old-host 13.37.13.37 --new-host 13.12.23.42
    """
    run_step(
        c,
        "copy-data",
        actions.copy_data_old_to_new,
        old_host=old_host,
        new_host=new_host,
        new_host_from_old=new_host_from_old,
        relay_dir=relay_dir,
        force=force,
        compress=compress or None,
    )


@task(help=_help("new_host", "relay_dir"))
def install(c, new_host=None, relay_dir=None):
    """Step 3, NEW host: cmdeploy run --disable-mail; check postfix/dovecot stay off.

    Relay >= 1.8: only CMDEPLOY_STAGES=install,configure (migrate runs it before step 1).

    Examples: fab -H 13.12.23.42 install | invoke install --new-host 13.12.23.42
    """
    run_step(c, "install", actions.install_on_new, new_host=new_host, relay_dir=relay_dir)


@task(help=_help("new_host", "relay_dir"))
def fix_ownership(c, new_host=None, relay_dir=None):
    """Step 4, NEW host: owners by name (vmail, opendkim, echobot, root, Postfix spool).

    Examples: fab -H 13.12.23.42 fix-ownership | invoke fix-ownership --new-host 13.12.23.42
    """
    run_step(
        c, "fix-ownership", actions.fix_ownership_on_new, new_host=new_host, relay_dir=relay_dir
    )


@task(help=_help("old_host", "new_host", "relay_dir", "checksum"))
def verify(c, old_host=None, new_host=None, relay_dir=None, checksum=False):
    """Step 5, OLD ↔ NEW: compare the copied trees (run after fix-ownership).

    Examples: fab -H 13.37.13.37 verify --new-host 13.12.23.42 --checksum |
    invoke verify --old-host 13.37.13.37 --new-host 13.12.23.42
    """
    run_step(
        c,
        "verify",
        actions.verify_trees,
        old_host=old_host,
        new_host=new_host,
        relay_dir=relay_dir,
        checksum=checksum,
    )


DNS_FLAGS = (
    "nameserver",
    "dns_timeout",
    "new_address",
    "wait",
    "wait_caches",
    "update_known_hosts",
)


def _dns_flags(nameserver, dns_timeout, new_address, wait, wait_caches, update_known_hosts):
    """Command-line DNS values as resolve() takes them (None: not given)."""
    return {
        "nameservers": nameserver,
        "dns_timeout": dns_timeout,
        "new_addresses": new_address,
        "dns_wait": False if not wait else None,
        "wait_caches": wait_caches or None,
        "update_known_hosts": update_known_hosts or None,
    }


@task(help=_help("old_host", "new_host", "relay_dir", "yes", *DNS_FLAGS))
def switch_dns(
    c,
    old_host=None,
    new_host=None,
    relay_dir=None,
    yes=False,
    nameserver=None,
    dns_timeout=None,
    new_address=None,
    wait=True,
    wait_caches=False,
    update_known_hosts=False,
):
    """Step 6, DNS: print the A/AAAA records to change and wait for your 'done'.

    Examples: fab -H 13.12.23.42 switch-dns --old-host 13.37.13.37 |
    invoke switch-dns --old-host 13.37.13.37 --new-host 13.12.23.42 --yes
    """
    run_step(
        c,
        "switch-dns",
        actions.switch_dns_records,
        old_host=old_host,
        new_host=new_host,
        relay_dir=relay_dir,
        yes=yes or None,
        **_dns_flags(nameserver, dns_timeout, new_address, wait, wait_caches, update_known_hosts),
    )


@task(help=_help("new_host", "relay_dir"))
def enable_mail(c, new_host=None, relay_dir=None):
    """Step 7, NEW host: cmdeploy run; check postfix/dovecot are active and enabled.

    Relay >= 1.8, after a staged install: only CMDEPLOY_STAGES=activate.

    Examples: fab -H 13.12.23.42 enable-mail | invoke enable-mail --new-host 13.12.23.42
    """
    run_step(c, "enable-mail", actions.enable_mail_on_new, new_host=new_host, relay_dir=relay_dir)


@task(
    help=_help(
        "old_host",
        "new_host",
        "new_host_from_old",
        "relay_dir",
        "force",
        "accept_new_host_keys",
        "nameserver",
    )
)
def preflight(
    c,
    old_host=None,
    new_host=None,
    new_host_from_old=None,
    relay_dir=None,
    force=False,
    accept_new_host_keys=False,
    nameserver=None,
):
    """OLD and NEW, changing nothing: can the migration work? PASS/WARN/FAIL per check.

    Examples: fab -H 13.37.13.37 preflight --new-host 13.12.23.42 |
    invoke preflight --new-host 13.12.23.42
    """
    s = _settings(
        c,
        "old",
        ("old_host", "new_host", "relay_dir"),
        True,
        old_host=old_host,
        new_host=new_host,
        new_host_from_old=new_host_from_old,
        relay_dir=relay_dir,
        force=force or None,
        accept_new_host_keys=accept_new_host_keys or None,
        nameservers=nameserver,
    )
    print(f"preflight {s.mail_domain}: {s.old_host} → {s.new_host}", flush=True)
    runner = Runner(s)
    started = time.monotonic()
    try:
        if s.dry:
            for role in ("old", "new"):
                runner.run(role, checks.facts_command(s.relay))
            print("dry run: checks not evaluated")
            return
        failed = []
        for check in checks.run_checks(s, runner, force=s.force, journal=Journal.for_settings(s)):
            colour = {"PASS": "green", "WARN": "yellow", "FAIL": "red"}[check.status]
            print(paint(f"{check.status:4}", colour) + check.line()[4:], flush=True)
            audit.note(s, f"preflight {check.line()}")
            if check.status == "FAIL":
                failed.append(check)
    except (MigrateError, SettingsError) as e:
        raise Exit(f"preflight stopped: {e}", code=1) from None
    except Exception as e:
        if debugging():
            raise
        raise Exit(f"preflight stopped: unexpected {type(e).__name__}: {e}", code=1) from None
    finally:
        runner.close()
    seconds = time.monotonic() - started
    if failed:
        raise Exit(
            f"preflight: {len(failed)} check(s) failed, nothing was changed "
            f"({failed[0].name}: {failed[0].detail})",
            code=1,
        )
    print(f"preflight passed in {seconds:.1f}s")


@task(help=_help("old_host", "relay_dir"))
def rollback(c, old_host=None, relay_dir=None):
    """OLD host: re-enable mail there (cmdeploy run) and check postfix/dovecot run again.

    migrate does this by itself when a step fails before DNS is switched.
    Examples: fab -H 13.37.13.37 rollback | invoke rollback --old-host 13.37.13.37
    """
    s = _settings(c, "old", ("old_host", "relay_dir"), True, old_host=old_host, relay_dir=relay_dir)
    journal = Journal.for_settings(s)
    if journal and journal.done("switch-dns"):
        print("note: DNS was switched to the new host: point it back at the old host too")
    print(f"rollback: re-enabling mail on {s.old_host}", flush=True)
    runner = Runner(s)
    try:
        actions.rollback_on_old(s, runner, journal)
    except (MigrateError, SettingsError) as e:
        raise Exit(f"rollback FAILED: {e}", code=1) from None
    finally:
        runner.close()
    if journal and not s.dry:
        journal.record_rollback()
    print("rollback done: mail runs on the old host; a new migrate starts over")


def migrate_summary(c) -> None:
    """Last part of ``migrate``: the table of steps, durations and mail downtime."""
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
    for number, name in enumerate(journal.plan, 1):
        step = journal.steps.get(name, {})
        seconds = f"{step['seconds']:8.1f}s" if "seconds" in step else "  (not done)"
        print(f"  [{number}/{len(journal.plan)}] {name:14} {seconds}")
    first, last = journal.steps.get("disable-mail"), journal.steps.get("enable-mail")
    if first and last:
        downtime = last["started_ts"] + last["seconds"] - first["started_ts"]
        print(f"  mail was down for {downtime:.1f}s (disable-mail start to enable-mail end)")
        print(
            f"  now raise the TTL of {journal.mail_domain}'s A/AAAA records again "
            "(14400-86400 s): short TTLs cost every client lookups"
        )
    print(f"  journal: {journal.path}")


# What migrate runs for each step of its plan (journal.plan).
STEP_TASKS = {
    "presync": presync,
    "disable-mail": disable_mail,
    "copy-data": copy_data,
    "install": install,
    "fix-ownership": fix_ownership,
    "verify": verify,
    "switch-dns": switch_dns,
    "enable-mail": enable_mail,
}


@task(
    help=_help(
        "old_host",
        "new_host",
        "relay_dir",
        "new_host_from_old",
        "presync",
        "compress",
        "yes",
        "restart",
        "force",
        "rollback",
        "accept_new_host_keys",
        "checksum",
        *DNS_FLAGS,
    ),
)
def migrate(
    c,
    old_host=None,
    new_host=None,
    relay_dir=None,
    new_host_from_old=None,
    presync=False,
    compress=False,
    yes=False,
    restart=False,
    force=False,
    rollback=True,
    accept_new_host_keys=False,
    checksum=False,
    nameserver=None,
    dns_timeout=None,
    new_address=None,
    wait=True,
    wait_caches=False,
    update_known_hosts=False,
):
    """OLD → NEW: preflight, then every step in order; a rerun resumes where it stopped.

    Relay >= 1.8: the new host is installed before mail goes down, activated last.
    Examples: invoke migrate --new-host 13.12.23.42 |
    invoke migrate --new-host 13.12.23.42 --presync |
    fab -H 13.37.13.37 migrate --new-host 13.12.23.42 | invoke --dry migrate --new-host NEW
    """
    s = _settings(
        c,
        "old",
        ("old_host", "new_host", "relay_dir"),
        True,
        old_host=old_host,
        new_host=new_host,
        relay_dir=relay_dir,
        new_host_from_old=new_host_from_old,
        presync=presync or None,
        compress=compress or None,
        yes=yes or None,
        force=force or None,
        rollback=None if rollback else False,
        accept_new_host_keys=accept_new_host_keys or None,
        checksum=checksum or None,
        **_dns_flags(nameserver, dns_timeout, new_address, wait, wait_caches, update_known_hosts),
    )
    try:
        if config_section(c).get("migrating"):
            raise SettingsError("migrate takes one old host: give a single -H host")
        journal = Journal.for_settings(s)
        assert journal is not None  # relay_dir is known, so is mail_domain
        if restart:
            journal.reset()
        journal.check_hosts(s)
    except SettingsError as e:
        raise _fail(e) from None
    staged, why = stages_supported(s)
    wanted = plan(presync=s.presync, staged=staged)
    if journal.done_steps() and journal.plan != wanted:
        print(f"resuming in the order this migration began: {', '.join(journal.plan)}")
    else:
        journal.plan = wanted
    # The steps are tasks of their own, which read their settings from the config:
    # everything resolved here is handed over through it.
    section = c.config.chatmail_migrate
    for key in MIGRATE_CONFIG_KEYS:
        value = getattr(s, key)
        if key == "relay_dir" and value is not None:
            value = str(value)
        elif key == "new_addresses":
            value = ",".join(value)
        section[key] = value
    section["migrating"] = True
    if not s.dry:
        journal.adopt_hosts(s)
        journal.save()
    print(f"migrate {s.mail_domain}: {s.old_host} → {s.new_host}" + (" (dry run)" if s.dry else ""))
    print(f"journal: {journal.path}")
    if not s.dry:
        print(f"command log: {audit.log_path(s)}; report at the end: {audit.report_path(s)}")
        audit.note(s, f"migrate {s.mail_domain}: {s.old_host} → {s.new_host}, plan {journal.plan}")
    if staged:
        print(f"cmdeploy stages ({why}): install on new before mail goes down, activate last")
    if journal.done_steps() and not s.dry:
        print(
            f"resuming at {journal.next_step()}: already done {', '.join(journal.done_steps())} "
            "(--restart starts over)"
        )
    try:
        preflight(c)
        for name in journal.plan:
            STEP_TASKS[name](c)
        migrate_summary(c)
    finally:
        if not s.dry:
            write_report(s)


def write_report(settings: Settings) -> None:
    """Write the final report from the journal, and say where it and the log are."""
    journal = Journal.for_settings(settings)
    path = audit.report_path(settings)
    if journal is None or path is None or not journal.path.exists():
        return
    path.write_text(report(journal, audit.log_path(settings)))
    print(f"report: {path}\ncommand log: {audit.log_path(settings)}", flush=True)


@task(help=_help("relay_dir"))
def status(c, relay_dir=None):
    """This machine only: where the migration stands (journal, command log, report).

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
        for number, name in enumerate(journal.plan, 1):
            step = journal.steps.get(name)
            state = f"done {step['finished']} in {step['seconds']}s" if step else "not done"
            print(f"  [{number}/{len(journal.plan)}] {name:14} {state}")
        failures = [e for e in journal.events if e.get("event") == "failed"]
        if failures and journal.next_step():
            last = failures[-1]
            print(f"  last failure: {last['step']} at {last['time']}: {last['message']}")
        print(f"  {journal.where_things_stand()}")
        s.mail_domain = journal.mail_domain
        for label, path in (("command log", audit.log_path(s)), ("report", audit.report_path(s))):
            if path and path.exists():
                print(f"  {label}: {path}")
