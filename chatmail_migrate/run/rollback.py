"""Rollback: mail back on the old host, decided from the hosts, never losing what new took.

A rollback reads both hosts first. When the new host took mail (this tool's
enable-mail started mail there and nothing carried it back since, or files in its
mailbox tree or queue changed while its mail units ran), that mail is carried back
to the old host before the old host serves again: new's mail stops, its mailbox
tree is mirrored onto old's (deletions of fetched mail included) and its queue
replaces old's, and the two are verified as a forward copy is. Repeating a rollback
finds the hosts as the last one left them and says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from chatmail_migrate import nameservers
from chatmail_migrate.checks import live_relay
from chatmail_migrate.cmdeploy import cmdeploy_host
from chatmail_migrate.errors import MigrateError, SettingsError, Stopped
from chatmail_migrate.hosts import commands, copy_key
from chatmail_migrate.hosts.connect import same_endpoint
from chatmail_migrate.hosts.runner import Runner
from chatmail_migrate.hostspec import ip
from chatmail_migrate.journal import Journal
from chatmail_migrate.lock import migration_lock
from chatmail_migrate.run.host_lock import HostLocks, LockHeld
from chatmail_migrate.settings import Settings, check_cmdeploy
from chatmail_migrate.steps import services, switch_dns
from chatmail_migrate.steps.carry_back import carry_back_new_to_old, new_host_facts


def roll_back(s: Settings, *, new_host_gone: bool = False) -> None:
    """Mail on the old host again, with what the new host took carried back first;
    recorded in the journal (the next migrate starts over). Decided from the hosts,
    safe to repeat. ``new_host_gone``: the operator says the new host is gone for good."""
    journal = Journal.for_settings(s)
    s = rollback_hosts(s, journal, new_host_gone=new_host_gone)
    print(
        f"rollback: mail back on {s.old_host}"
        + (f"; the new host {s.new_host} is looked at first" if s.new_host else ""),
        flush=True,
    )
    runner = Runner(s)
    locks = HostLocks(s)
    try:
        with migration_lock(s):
            journal = Journal.for_settings(s)
            locks.journal = journal  # a dead run of this journal may be taken over
            try:
                # Both: mail may be carried back from new. An unreachable new host is
                # judged by the rollback itself (it refuses when new took mail).
                locks.hold("old")
                if s.new_host:
                    try_new_host_lock(locks)
            except LockHeld as e:
                raise Stopped(f"rollback not started, nothing changed: {e}", code=1) from None
            if journal and journal.done("switch-dns"):
                print("note: DNS was switched to the new host: point it back at the old host too")
            done = roll_back_hosts(s, runner, journal, new_host_gone=new_host_gone)
            if journal and not s.dry:
                journal.adopt_hosts(s)
                journal.record_rollback()
    except (MigrateError, SettingsError) as e:
        raise Stopped(f"rollback FAILED: {e}", code=1) from None
    finally:
        locks.release()
        runner.close()
    carried = "; the mail the new host took was carried back" if done.carried_back else ""
    print(
        f"rollback done: mail runs on the old host {s.old_host}{carried}; a new migrate starts over"
    )
    for line in done.left:
        print(f"  still to do: {line}")


def try_new_host_lock(locks: HostLocks) -> None:
    """The new host's lock for a rollback; another run's lock refuses (LockHeld)."""
    try:
        locks.hold("new")
    except LockHeld:
        raise
    except MigrateError as e:
        print(f"  no lock on the new host ({e}): the rollback judges it by what it can reach")


def rollback_hosts(
    s: Settings, journal: Journal | None, *, new_host_gone: bool = False
) -> Settings:
    """The hosts a rollback works on: the flags, else the journal's; never DNS's.

    After the switch the mail domain names the new host: a rollback that took its old
    host from DNS would deploy on the live new relay and leave the real old host off.
    The new host is needed too (it may serve, or hold mail to carry back), unless the
    journal shows no copy began, or the operator says it is gone.
    """
    if s.old_host_from_domain:
        if not (journal and journal.old_host):
            raise SettingsError(
                f"rollback: no journal here names {s.mail_domain}'s old host, and DNS may "
                "already point the domain at the new one: give --old-host OLD --new-host NEW"
            )
        s = dataclasses.replace(s, old_host=journal.old_host, old_host_from_domain=False)
    new_host = s.new_host or (journal.last_new_host() if journal else None)
    if not new_host and not new_host_gone:
        if not (journal and journal.path.exists()) or journal.started_anywhere():
            raise SettingsError(
                "rollback: give --new-host NEW, the host mail was being moved to (it may "
                "serve, or hold mail to carry back), or --new-host-gone if it is gone for good"
            )
        print("  no copy to a new host began (journal): only the old host is looked at")
    if new_host and same_endpoint(s, new_host, s.old_host or ""):
        raise SettingsError(f"rollback: --new-host {new_host} is the old host; give the other")
    check_cmdeploy(s)
    cmdeploy_host(s.old_host or "")
    return dataclasses.replace(s, new_host=new_host)


@dataclass
class Rollback:
    """What a rollback did, and what is left for the operator (one line each)."""

    carried_back: bool = False
    left: list[str] = field(default_factory=list)


def roll_back_hosts(
    settings: Settings,
    runner: Runner,
    journal: Journal | None,
    *,
    new_host_gone: bool = False,
    unreachable_new_never_served: bool = False,
) -> Rollback:
    """Stop mail on new (carrying back what it took), then serve mail on old again.

    ``settings.new_host`` is None only when no copy to any new host began.
    ``new_host_gone``: the operator says the new host is gone for good; it is not asked.
    ``unreachable_new_never_served``: this very run knows new never served (a step
    before enable-mail failed), so an unreachable new host does not stop the rollback.
    """
    new_facts = None
    if settings.new_host and not new_host_gone:
        new_facts = new_host_facts(settings, runner, unreachable_new_never_served)
        # A copy key an interrupted copy left (on old, authorized on new): never kept.
        copy_key.remove(settings, runner, interrupted=True)
    old_facts = live_relay.mail_facts(settings, runner, "old")
    if settings.dry:
        services.rollback_on_old(settings, runner, journal)
        return Rollback()
    assert old_facts is not None
    refuse_unsafe_rollback(settings, old_facts, new_facts, new_host_gone)
    if new_facts and new_facts.active:
        services.stop_mail_on_new(settings, runner, must=True)
    carried = bool(new_facts and new_facts.carry_due)
    if new_facts and carried:
        carry_back_new_to_old(settings, runner, journal, new_facts)
    # Records this tool changed (--dns rfc2136) go back once new's mail is stopped and
    # carried back: from here clients may only find old.
    restored = switch_dns.restore_records(settings, journal) if journal else None
    left = [restored] if restored else []
    left += dns_left_to_do(settings, runner, journal, old_facts, new_facts)
    if new_facts and new_facts.changed and not carried:
        # Weaker evidence than this tool's own mark: never mirrored over old's mail.
        left.append(
            f"the new host {settings.new_host} may hold mail the old host lacks "
            f"({new_facts.took_mail_reason()}): it was not carried back (only mail this "
            "tool's enable-mail let in is); look at its mailboxes, copy what is yours by "
            "hand (rsync without --delete), then `date +%s > "
            f"{commands.CARRIED_BACK}` there lets copies to it go ahead"
        )
    if old_facts.active and not carried and not (new_facts and new_facts.active):
        states = commands.parse_service_states(
            runner.run("old", commands.service_state_command(), hide=True).stdout
        )
        if not commands.service_problems(states, True):
            print(
                f"  the old host {settings.old_host} already serves mail"
                + (f" and the new host {settings.new_host} is stopped" if new_facts else "")
                + ": nothing to roll back there"
            )
            return Rollback(False, left)
    if carried:
        # The carry back replaced old's spool, opendkim's socket in it too.
        services.restart_on_copied_state(runner, "old")
    services.rollback_on_old(settings, runner, journal)
    if carried:
        services.expect_milters_reachable(runner, "old")
    return Rollback(carried, left)


def refuse_unsafe_rollback(
    settings: Settings,
    old_facts: live_relay.MailFacts,
    new_facts: live_relay.MailFacts | None,
    new_host_gone: bool,
) -> None:
    """Refuse, before anything changes, a rollback that would lose or mix mail."""
    old, new = settings.old_host, settings.new_host
    if new_facts and old_facts.installed and old_facts.installed > (new_facts.installed or 0):
        raise MigrateError(
            f"rollback refused, nothing changed: this tool installed the relay on {old}, "
            f"given as the old host, at {live_relay.clock(old_facts.installed)}, after any "
            f"install on {new}: are --old-host and --new-host swapped?"
        )
    if old_facts.carry_due and not (new_facts and new_facts.carry_due):
        raise MigrateError(
            f"rollback refused, nothing changed: the host given as old, {old}, took mail as a "
            f"migration's new host since {live_relay.clock(old_facts.served_since)} that was "
            f"never carried away: are --old-host and --new-host swapped?"
        )
    if new_facts and new_facts.carry_due and old_facts.active:
        raise MigrateError(
            f"rollback refused, nothing changed: both hosts took mail ({old} runs "
            f"{' and '.join(old_facts.active)}; {new} took mail since "
            f"{live_relay.clock(new_facts.served_since)}). Two relays' mail is not merged "
            "automatically: keep the one DNS points at, stop mail on the other and copy "
            "its mail over by hand (rsync without --delete)"
        )
    if old_facts.carrying and not (new_facts and new_facts.carry_due) and not new_host_gone:
        raise MigrateError(
            f"rollback refused, nothing changed: a carry back into {old} began at "
            f"{live_relay.clock(old_facts.carrying)} and was not verified (old's mailboxes "
            f"may be partly new's), and {new or 'the new host'} no longer shows that mail "
            "to carry: look at both, or give --new-host-gone to serve what old holds"
        )


def dns_left_to_do(
    settings: Settings,
    runner: Runner,
    journal: Journal | None,
    old_facts: live_relay.MailFacts,
    new_facts: live_relay.MailFacts | None,
) -> list[str]:
    """The A/AAAA records still naming the new host, asked of the authoritative servers,
    and what they should say instead (the old host's public addresses).

    New's addresses: its own, the one this machine reached it at, and those the
    journal's switch-dns asked for (behind NAT the public one is on no interface).
    """
    domain = settings.mail_domain
    if not (domain and new_facts):
        return []
    try:
        published = nameservers.published_addresses(domain, settings.nameservers)
    except MigrateError as e:
        return [f"check that DNS points {domain} at the old host: the nameservers said {e}"]
    asked = journal.dns_records_asked() if journal else None
    named = [*new_facts.addresses, runner.reached_address("new") or ""]
    named += [v for values in (asked or {}).values() for v in values]
    new_addresses = nameservers.canonical(a for a in named if ip(a))
    if not (published & new_addresses):
        return []
    # Old's public addresses, else the one this machine reached it at.
    public = [a for a in old_facts.addresses if (address := ip(a)) and address.is_global]
    old = sorted(
        set(public or [runner.reached_address("old") or ""]) - {""}, key=lambda a: ":" in a
    )
    records = ", ".join(f"{'AAAA' if ':' in a else 'A'} {a}" for a in old) or "the old host's"
    return [
        f"point DNS back: {domain} still names the new host "
        f"({', '.join(sorted(published & new_addresses))}) at its "
        f"authoritative nameservers; make its records {records}"
    ]
