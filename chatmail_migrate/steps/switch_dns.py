"""Step 6, switching DNS: propose the records, change them, wait, then check what is
published.

It asks the zone's authoritative servers (never a cache) and prints what to change.
By default (``--dns manual``) the operator changes the records and says so; with
``--dns rfc2136`` the tool sends the zone's primary a signed dynamic update itself
(``dns_update``), kept in the journal so a rollback can set the records back. Then it
waits for every server to answer the new values, and checks the DKIM and CAA records
against the new host.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from chatmail_migrate import dns_settings, dns_update, nameservers
from chatmail_migrate.checks.dkim import dkim_tags
from chatmail_migrate.errors import MigrateError, SettingsError
from chatmail_migrate.hosts import commands
from chatmail_migrate.hosts.addresses import (
    ipv4_deletion_refused,
    new_host_addresses,
    new_host_records,
)
from chatmail_migrate.hosts.runner import Runner
from chatmail_migrate.journal import Journal
from chatmail_migrate.settings import Settings
from chatmail_migrate.steps import domain_keys


def _status_printer():
    """One live line on a terminal; plain lines otherwise."""
    if sys.stdout.isatty():
        return lambda line: print(f"\r\033[K  {line}", end="", flush=True)
    return lambda line: print(f"  {line}", flush=True)


@dataclass(frozen=True)
class Proposal:
    """The records to change, as the authoritative servers have them now."""

    domain: str
    zone: str
    servers: list[nameservers.Server]
    old: dict[str, list[str]]
    want: dict[str, list[str]]
    old_ttl: int
    # Every server answers the new values already (a rerun, or DNS changed early).
    already: bool


def propose_records(settings: Settings, runner: Runner) -> Proposal:
    """Ask the zone's authoritative servers, and print the changes to make there."""
    domain = settings.mail_domain or ""
    new, why = new_host_records(settings, runner)
    given = nameservers.parse_nameservers(settings.nameservers)
    zone, servers = nameservers.authoritative_servers(domain, given)
    current = nameservers.address_records(domain, servers)
    old = {t: sorted({v for a in current.values() for v in a[t].values}) for t in ("A", "AAAA")}
    ttls = [a[t].ttl for a in current.values() for t in ("A", "AAAA") if a[t].ttl is not None]
    want = {t: sorted(new[t]) for t in ("A", "AAAA") if new[t] or old[t]}
    refused = ipv4_deletion_refused(settings, old["A"], new["A"], why["A"])
    if refused:
        raise MigrateError(f"switch-dns refused: {refused}")
    if settings.dns == "rfc2136":
        print(f"  These records change in the zone {zone}:")
    else:
        print(
            f"  Change these records in the zone {zone} (nameservers: "
            f"{', '.join(str(s) for s in servers)}), TTL {nameservers.SUGGESTED_TTL}:"
        )
    for row in proposed_changes(domain, old, want, why):
        print(f"    {row}")
    already = all(
        nameservers.canonical(current[s][t].values) == nameservers.canonical(v)
        for s in servers
        for t, v in want.items()
    )
    return Proposal(domain, zone, servers, old, want, max(ttls, default=0), already)


def proposed_changes(
    domain: str, old: dict[str, list[str]], want: dict[str, list[str]], why: dict[str, str]
) -> list[str]:
    """One line per record: what changes in it, and why (``why`` by address, or by
    record type for a type new gets none of)."""
    rows = []
    for rtype, values in want.items():
        before, after = ", ".join(old[rtype]), ", ".join(values)
        reason = "; ".join(dict.fromkeys(why.get(v, "") for v in values)) or why.get(rtype, "")
        if not values:
            change = f"delete {before}"
        elif nameservers.canonical(old[rtype]) == nameservers.canonical(values):
            change = f"keep {after}"
        elif not before:
            change = f"add {after}"
        else:
            change = f"replace {before} with {after}"
        rows.append(f"{rtype:5} {domain}: {change} ({reason})")
    return rows


def confirm_change(settings: Settings, proposal: Proposal, journal: Journal | None) -> None:
    """The operator's word that the records are changed (or --yes, or already done)."""
    by = "operator"
    if proposal.already:
        by = "already"
        print("  every nameserver already answers the new values")
    elif settings.yes:
        by = "--yes"
        print("  --yes: not asking for confirmation")
    elif not sys.stdin.isatty():
        raise MigrateError(
            "switch-dns waits for you to confirm the DNS change, but there is no terminal; "
            "change the records, then rerun with --yes"
        )
    else:
        while input("  Type 'done' once the records are changed: ").strip().lower() != "done":
            pass
    if journal:
        journal.note("dns-change-confirmed", old_ttl=proposal.old_ttl, records=proposal.want, by=by)


def planned_update(
    settings: Settings, proposal: Proposal
) -> tuple[nameservers.Server, list[dns_update.RecordChange]]:
    """Where the update goes, and the RRsets it changes, read from that server."""
    primary = dns_update.primary_server(proposal.zone, proposal.servers, settings.dns_server)
    return primary, dns_update.plan_changes(proposal.domain, primary, proposal.old, proposal.want)


def update_records(settings: Settings, proposal: Proposal, journal: Journal | None) -> None:
    """--dns rfc2136: the tool changes the records itself, nobody is asked."""
    key = dns_settings.load_tsig(settings.tsig_file)
    primary, changes = planned_update(settings, proposal)
    if not changes:
        print(f"  {primary} already holds the new values: nothing to update")
    else:
        dns_update.send_update(primary, proposal.zone, changes, key)
        if journal:
            journal.note("dns-updated", **dns_update.as_journal(primary, proposal.zone, changes))
        for change in changes:
            print(
                f"  updated {change.rtype} {change.name} at {primary}: "
                f"{', '.join(change.before) or '(none)'} -> {', '.join(change.after) or '(none)'}"
                f" (TTL {change.ttl})"
            )
    if journal:
        journal.note(
            "dns-change-confirmed", old_ttl=proposal.old_ttl, records=proposal.want, by="rfc2136"
        )


def restore_records(settings: Settings, journal: Journal) -> str | None:
    """Set back what this tool's last update changed, if the records still hold what it
    set (a later edit is someone's and stays). None when done or nothing to do; else
    what is left for the operator, in one line."""
    event = journal.dns_update_in_force()
    if not event:
        return None
    server, zone, changes = dns_update.from_journal(event)
    back = [change.reverse() for change in changes]
    shown = "; ".join(f"{c.rtype} {c.name} {', '.join(c.after) or '(none)'}" for c in back)
    try:
        key = dns_settings.load_tsig(settings.tsig_file)
        dns_update.send_update(server, zone, back, key)
    except (MigrateError, SettingsError) as e:
        return f"set the DNS records back by hand ({shown}): {e}"
    journal.note("dns-restored", **dns_update.as_journal(server, zone, back))
    print(f"  DNS set back at {server}: {shown}")
    domain = settings.mail_domain or ""
    want = {c.rtype: c.after for c in back if c.name.rstrip(".") == domain.rstrip(".")}
    if not (settings.dns_wait and want):
        return None
    try:
        _, servers = nameservers.authoritative_servers(
            domain, nameservers.parse_nameservers(settings.nameservers)
        )
        waited = nameservers.wait_for(
            domain, servers, want, timeout=settings.dns_timeout, status=lambda line: None
        )
    except MigrateError as e:
        return f"the DNS records were set back at {server}, but {e}"
    print(f"  all {len(servers)} nameservers answer the old values again (waited {waited:.0f}s)")
    return None


def wait_for_records(settings: Settings, proposal: Proposal) -> None:
    """Until every authoritative server answers the new values (or --no-wait)."""
    if not settings.dns_wait:
        print("  --no-wait: not waiting for the nameservers")
        return
    waited = nameservers.wait_for(
        proposal.domain,
        proposal.servers,
        proposal.want,
        timeout=settings.dns_timeout,
        status=_status_printer(),
    )
    if sys.stdout.isatty():
        print()
    print(f"  all {len(proposal.servers)} nameservers answer the new values (waited {waited:.0f}s)")


def check_after_switch(
    settings: Settings, runner: Runner, proposal: Proposal, journal: Journal | None
) -> None:
    """Caches, the published DKIM and CAA values against the new host, known_hosts."""
    expiry = time.time() + proposal.old_ttl
    until = time.strftime("%H:%M:%S", time.localtime(expiry))
    print(
        f"  resolvers may hand out the old address until {until} "
        f"(now + old TTL {proposal.old_ttl}s)"
    )
    if journal:
        journal.note(
            "dns-switched",
            caches_expire=expiry,
            waited=settings.dns_wait,
            records=dict(proposal.want),
        )
    check_published_keys(settings, runner, proposal.servers[0])
    domain_keys.offer_new_key_only(settings, runner)
    if settings.wait_caches and proposal.old_ttl:
        print(f"  --wait-caches: waiting {proposal.old_ttl}s for resolver caches")
        time.sleep(max(0, expiry - time.time()))


def switch_dns_records(settings: Settings, runner: Runner, journal: Journal | None = None) -> None:
    """The step: propose the records, get them confirmed, let ssh accept both hosts'
    keys for the domain meanwhile, wait for the servers, then check what they publish."""
    if settings.dry:
        new_host_addresses(settings, runner)
        print(
            f"  (would ask the nameservers of {settings.mail_domain} for its A/AAAA records, "
            "print the changes, wait for your 'done', then for every nameserver to answer them)"
        )
        return
    proposal = propose_records(settings, runner)
    if settings.dns == "rfc2136":
        update_records(settings, proposal, journal)
    else:
        confirm_change(settings, proposal, journal)
    domain_keys.accept_both(settings, runner, journal)
    wait_for_records(settings, proposal)
    check_after_switch(settings, runner, proposal, journal)


DKIM_SELECTOR = "opendkim"


def _dkim_p(record: str) -> str:
    return dkim_tags(record).get("p", "")


def check_published_keys(settings: Settings, runner: Runner, server) -> None:
    """The DKIM TXT record and CAA accounturi must match what the NEW host has."""
    domain = settings.mail_domain or ""
    name = f"{DKIM_SELECTOR}._domainkey.{domain}"
    records = [r for r in nameservers.lookup(server, name, "TXT").values if "p=" in r]
    facts = runner.run("new", commands.published_keys_facts_command(), hide=True, quiet=True)
    sections = commands.parse_sections(facts.stdout)
    key = "".join(sections.get("dkim", []))
    if not records:
        print(f"  WARN: no DKIM record at {name}: publish the key of /etc/dkimkeys/opendkim.txt")
    elif _dkim_p(records[0]) != key:
        raise MigrateError(
            f"DKIM: {name} publishes p={_dkim_p(records[0])} but the new host's "
            f"/etc/dkimkeys/opendkim.private has p={key or '(none)'}: the key did not come "
            "across intact; copy /etc/dkimkeys again, or publish the new host's key"
        )
    else:
        print(f"  DKIM record {name} matches the new host's key")
    uris = [
        part.split("=", 1)[1]
        for r in nameservers.lookup(server, domain, "CAA").values
        for part in r.replace('"', "").split(";")
        if part.strip().startswith("accounturi=")
    ]
    accounts = sections.get("acme", [])
    if uris and not set(uris) & set(accounts):
        raise MigrateError(
            f"CAA: {domain} allows only accounturi {', '.join(uris)}, but the new host's "
            f"ACME account is {', '.join(accounts) or '(none)'}: copy /var/lib/acme again, "
            "or change the CAA record"
        )
    if uris:
        print("  CAA accounturi matches the new host's ACME account")
