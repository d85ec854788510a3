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


def roll_back_hosts(settings: Settings, runner: Runner, journal: Journal | None) -> Rollback:
    """Stop mail on new (carrying back what it took), then serve mail on old again.

    ``settings.new_host`` may be None (no new host known: only old is brought back).
    """
    new_facts = None
    if settings.new_host:
        new_facts = _new_host_facts(settings, runner, journal)
        # A copy key an interrupted copy left (on old, authorized on new): never kept.
        copy_key.remove(settings, runner, interrupted=True)
    old_facts = actions.mail_facts(settings, runner, "old")
    if settings.dry:
        actions.rollback_on_old(settings, runner, journal)
        return Rollback()
    assert old_facts is not None
    if new_facts and new_facts.active:
        actions.stop_mail_on_new(settings, runner, must=True)
    carried = False
    if new_facts and new_facts.took_mail:
        carry_back_new_to_old(settings, runner, journal, new_facts, old_facts)
        carried = True
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
            return Rollback(False, dns_left_to_do(settings, old_facts, new_facts))
    actions.rollback_on_old(settings, runner, journal)
    return Rollback(carried, dns_left_to_do(settings, old_facts, new_facts))


def _new_host_facts(
    settings: Settings, runner: Runner, journal: Journal | None
) -> actions.MailFacts | None:
    """The new host's mail facts; an unreachable new host that took mail (the journal
    says enable-mail started mail there) stops the rollback: its mail would be stranded."""
    try:
        return actions.mail_facts(settings, runner, "new")
    except MigrateError as e:
        served = journal.new_host_served(settings.new_host) if journal else None
        if served:
            raise MigrateError(
                f"the new host {settings.new_host} cannot be reached ({e}), and it took mail "
                f"since {served} (enable-mail): a rollback now would strand that mail. Make "
                f"it reachable and rerun rollback; nothing was changed"
            ) from None
        print(f"  could not reach the new host ({e}): if mail runs there, stop it yourself")
        return None


def carry_back_new_to_old(
    settings: Settings,
    runner: Runner,
    journal: Journal | None,
    new_facts: actions.MailFacts,
    old_facts: actions.MailFacts,
) -> None:
    """Mirror new's mailbox tree onto old's and replace old's queue with new's, verified.

    The copy runs on new, as the forward one runs on old (agent forwarded, old's key
    pinned to the one this machine saw), with both hosts' mail stopped.
    """
    if old_facts.active:
        raise MigrateError(
            f"the old host {settings.old_host} runs {' and '.join(old_facts.active)} while the "
            f"new host {settings.new_host} holds mail it took: both served. Stop mail on old "
            "(cmdeploy run --disable-mail --ssh-host OLD), then rerun rollback to carry new's "
            "mail back; nothing was copied"
        )
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
    try:
        tree = actions.mailbox_tree(settings)
        paths = existing_paths(back_runner, "old", [tree, SPOOL])
        actions.need_agent(back, "rollback")
        actions.need_rsync(back, back_runner, "rollback")
        summaries = actions.copy_to_new(
            back,
            back_runner,
            paths,
            replace=True,
            sync_mailboxes=tree in paths,
            mailbox_tree=tree,
            owners_by_name=True,
        )
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
        back_runner.run(
            "old",
            f"date +%s > {commands.CARRIED_BACK}.tmp && mv {commands.CARRIED_BACK}.tmp "
            f"{commands.CARRIED_BACK}",
            hide=True,
        )
    finally:
        back_runner.close()
    if journal:
        journal.note("carried-back", host=settings.new_host, copies=summaries)
    print(f"  carried back: {report.summary().splitlines()[0]}")


def dns_left_to_do(
    settings: Settings,
    old_facts: actions.MailFacts,
    new_facts: actions.MailFacts | None,
) -> list[str]:
    """The A/AAAA records still naming the new host, asked of the authoritative servers,
    and what they should say instead (the old host's public addresses)."""
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
    new_addresses = {_address(a) for a in new_facts.addresses} - {None}
    published = {
        _address(v) for answer in current.values() for t in ("A", "AAAA") for v in answer[t].values
    }
    if not (published & new_addresses):
        return []
    old = sorted(old_facts.addresses, key=lambda a: ":" in a)
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
