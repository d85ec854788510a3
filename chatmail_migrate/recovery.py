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
import ipaddress
from dataclasses import dataclass, field

from . import actions, commands, copy_key, dnscheck
from .errors import MigrateError
from .journal import Journal
from .relay import SPOOL
from .remote import Runner, existing_paths
from .settings import Settings


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
        new_facts = _new_host_facts(settings, runner, unreachable_new_never_served)
        # A copy key an interrupted copy left (on old, authorized on new): never kept.
        copy_key.remove(settings, runner, interrupted=True)
    old_facts = actions.mail_facts(settings, runner, "old")
    if settings.dry:
        actions.rollback_on_old(settings, runner, journal)
        return Rollback()
    assert old_facts is not None
    refuse_unsafe_rollback(settings, old_facts, new_facts, new_host_gone)
    if new_facts and new_facts.active:
        actions.stop_mail_on_new(settings, runner, must=True)
    carried = bool(new_facts and new_facts.carry_due)
    if new_facts and carried:
        carry_back_new_to_old(settings, runner, journal, new_facts)
    left = dns_left_to_do(settings, runner, journal, old_facts, new_facts)
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
        actions.restart_on_copied_state(runner, "old")
    actions.rollback_on_old(settings, runner, journal)
    if carried:
        actions.expect_milters_reachable(runner, "old")
    return Rollback(carried, left)


def refuse_unsafe_rollback(
    settings: Settings,
    old_facts: actions.MailFacts,
    new_facts: actions.MailFacts | None,
    new_host_gone: bool,
) -> None:
    """Refuse, before anything changes, a rollback that would lose or mix mail."""
    old, new = settings.old_host, settings.new_host
    if new_facts and old_facts.installed and old_facts.installed > (new_facts.installed or 0):
        raise MigrateError(
            f"rollback refused, nothing changed: this tool installed the relay on {old}, "
            f"given as the old host, at {actions.clock(old_facts.installed)}, after any "
            f"install on {new}: are --old-host and --new-host swapped?"
        )
    if old_facts.carry_due and not (new_facts and new_facts.carry_due):
        raise MigrateError(
            f"rollback refused, nothing changed: the host given as old, {old}, took mail as a "
            f"migration's new host since {actions.clock(old_facts.served_since)} that was "
            f"never carried away: are --old-host and --new-host swapped?"
        )
    if new_facts and new_facts.carry_due and old_facts.active:
        raise MigrateError(
            f"rollback refused, nothing changed: both hosts took mail ({old} runs "
            f"{' and '.join(old_facts.active)}; {new} took mail since "
            f"{actions.clock(new_facts.served_since)}). Two relays' mail is not merged "
            "automatically: keep the one DNS points at, stop mail on the other and copy "
            "its mail over by hand (rsync without --delete)"
        )
    if old_facts.carrying and not (new_facts and new_facts.carry_due) and not new_host_gone:
        raise MigrateError(
            f"rollback refused, nothing changed: a carry back into {old} began at "
            f"{actions.clock(old_facts.carrying)} and was not verified (old's mailboxes "
            f"may be partly new's), and {new or 'the new host'} no longer shows that mail "
            "to carry: look at both, or give --new-host-gone to serve what old holds"
        )


def _new_host_facts(
    settings: Settings, runner: Runner, never_served: bool
) -> actions.MailFacts | None:
    """The new host's mail facts. Unreachable, it stops the rollback (whether it took
    mail, or serves still, cannot be told, and its mail would be stranded), unless this
    run knows it never served."""
    try:
        return actions.mail_facts(settings, runner, "new")
    except MigrateError as e:
        if never_served:
            print(f"  the new host cannot be reached ({e}); it never served mail in this run")
            return None
        raise MigrateError(
            f"rollback refused, nothing changed: the new host {settings.new_host} cannot be "
            f"reached ({e}), so whether it serves or took mail cannot be told. Make it "
            "reachable and rerun; if it is gone for good (its mail with it), rerun with "
            "--new-host-gone"
        ) from None


def carry_back_new_to_old(
    settings: Settings,
    runner: Runner,
    journal: Journal | None,
    new_facts: actions.MailFacts,
) -> None:
    """Mirror new's mailbox tree onto old's and replace old's queue with new's, verified.

    The copy runs on new, as the forward one runs on old (agent forwarded, old's key
    pinned to the one this machine saw), with both hosts' mail stopped. Old carries a
    mark while it may be partly new's; only a verified carry back removes it.
    """
    print(
        f"  the new host {settings.new_host} took mail ({new_facts.took_mail_reason()}): "
        f"carrying it back to the old host {settings.old_host} before old serves again"
    )
    # The same copy, the other way: new is the source ("old" role), old the target.
    back = dataclasses.replace(
        settings,
        old_host=settings.new_host,
        new_host=settings.old_host,
        new_host_from_old=None,
        compress=False,
    )
    back_runner = Runner(back)
    if journal:
        journal.note("carry-back-started", host=settings.new_host)
    try:
        back_runner.run("new", commands.stamp_command(commands.CARRYING), hide=True)
        tree = actions.mailbox_tree(settings)
        paths = existing_paths(back_runner, "old", [tree, SPOOL])
        actions.need_agent(back, "rollback")
        actions.need_rsync(back, back_runner, "rollback")
        try:
            summaries = actions.copy_to_new(
                back,
                back_runner,
                paths,
                replace=True,
                sync_mailboxes=tree in paths,
                mailbox_tree=tree,
                owners_by_name=True,
            )
        except (MigrateError, KeyboardInterrupt) as e:
            why = str(e) if isinstance(e, MigrateError) else "interrupted"
            raise MigrateError(
                f"carrying new's mail back failed ({why}): old's mailboxes and queue may be "
                "partly replaced by new's, whose are untouched; old stays off. Fix the "
                "cause and rerun rollback: it carries everything back again"
            ) from None
        # Queue files renamed to old's inode numbers, owners checked by name.
        back_runner.run_script("new", commands.fix_ownership_script(paths, tree))
        checked = back_runner.run("new", "postfix check 2>&1 || true", hide=True).stdout
        problems = commands.postfix_check_problems(checked.splitlines())
        if problems:
            raise MigrateError("postfix check on old after the carry back: " + " / ".join(problems))
        report = actions.compare_trees(back, back_runner, paths, checksum=False)
        if not report.ok:
            raise MigrateError(
                "the mail carried back differs from the new host's: "
                + report.summary()
                + "; old stays off, new's data is untouched: fix it and rerun rollback"
            )
        back_runner.run("old", commands.stamp_command(commands.CARRIED_BACK), hide=True)
        back_runner.run("new", f"rm -f {commands.CARRYING}", hide=True)
    finally:
        back_runner.close()
    if journal:
        journal.note("carried-back", host=settings.new_host, copies=summaries)
    print(f"  carried back: {report.summary().splitlines()[0]}")


def dns_left_to_do(
    settings: Settings,
    runner: Runner,
    journal: Journal | None,
    old_facts: actions.MailFacts,
    new_facts: actions.MailFacts | None,
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
        _, servers = dnscheck.authoritative_servers(
            domain, dnscheck.parse_nameservers(settings.nameservers)
        )
        current = dnscheck.address_records(domain, servers)
    except MigrateError as e:
        return [f"check that DNS points {domain} at the old host: the nameservers said {e}"]
    asked = journal.dns_records_asked() if journal else None
    named = [*new_facts.addresses, runner.reached_address("new") or ""]
    named += [v for values in (asked or {}).values() for v in values]
    new_addresses = {_address(a) for a in named} - {None}
    published = {
        _address(v) for answer in current.values() for t in ("A", "AAAA") for v in answer[t].values
    }
    if not (published & new_addresses):
        return []
    # Old's public addresses, else the one this machine reached it at.
    public = [a for a in old_facts.addresses if (ip := _address(a)) and ip.is_global]
    old = sorted(
        set(public or [runner.reached_address("old") or ""]) - {""}, key=lambda a: ":" in a
    )
    records = ", ".join(f"{'AAAA' if ':' in a else 'A'} {a}" for a in old) or "the old host's"
    return [
        f"point DNS back: {domain} still names the new host "
        f"({', '.join(sorted(str(a) for a in published & new_addresses))}) at its "
        f"authoritative nameservers; make its records {records}"
    ]


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
