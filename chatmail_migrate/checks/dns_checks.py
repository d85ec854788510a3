"""preflight's DNS checks: the relay's address records as its authoritative servers
have them, their TTL, and (``--dns rfc2136``) that the zone's primary takes the key's
updates."""

from __future__ import annotations

from chatmail_migrate import dns_settings, dns_update, nameservers
from chatmail_migrate.checks.check import Check
from chatmail_migrate.errors import MigrateError, SettingsError
from chatmail_migrate.settings import Settings


def _duration(seconds: int) -> str:
    return f"{seconds // 3600} h" if seconds >= 7200 else f"{seconds // 60} min"


def check_dns(settings: Settings, old_addresses: list[str]):
    """The relay's A/AAAA records as its authoritative servers have them now."""
    domain = settings.mail_domain or ""
    try:
        left_out: list[str] = []
        zone, servers = nameservers.authoritative_servers(
            domain, nameservers.parse_nameservers(settings.nameservers), left_out
        )
        answers = nameservers.address_records(domain, servers)
    except MigrateError as e:
        yield Check("FAIL", "DNS", f"{e}; give the nameservers with --nameserver if need be")
        return
    for why in left_out:
        yield Check("WARN", "DNS", f"{why}; asked that server's other addresses")
    values = sorted({v for a in answers.values() for t in ("A", "AAAA") for v in a[t].values})
    if not values:
        yield Check(
            "FAIL",
            "DNS",
            f"{domain} has no A or AAAA record at "
            f"{', '.join(str(s) for s in servers)}: fix the zone {zone}",
        )
        return
    if len({tuple(tuple(a[t].values) for t in ("A", "AAAA")) for a in answers.values()}) > 1:
        yield Check("WARN", "DNS", f"the nameservers of {zone} disagree about {domain}")
    yield Check(
        "PASS", "DNS", f"{domain} → {', '.join(values)} at {len(servers)} nameservers of {zone}"
    )
    if settings.dns == "rfc2136":
        yield check_dns_update(settings, zone, servers)
    ttl = max((a[t].ttl or 0) for a in answers.values() for t in ("A", "AAAA"))
    if ttl > nameservers.SUGGESTED_TTL:
        yield Check(
            "WARN",
            "DNS TTL",
            f"{ttl} s: after the switch, resolvers may keep sending "
            f"clients to the old host for up to {_duration(ttl)} ({ttl} s); lower the "
            f"TTL to {nameservers.SUGGESTED_TTL} s and wait {ttl} s before migrating",
        )
    else:
        yield Check("PASS", "DNS TTL", f"{ttl} s")
    if old_addresses and not nameservers.canonical(values) & nameservers.canonical(old_addresses):
        yield Check(
            "WARN",
            "DNS points at old",
            f"{domain} → {', '.join(values)}, but the old "
            f"host has {', '.join(old_addresses)} (fine behind NAT; else check the hosts)",
        )


def check_dns_update(settings: Settings, zone: str, servers: list) -> Check:
    """--dns rfc2136: the zone's primary takes this key's updates. Sent as an update
    whose prerequisites are the records as they are, with nothing to change: the server
    checks the key and its update ACL, and the zone stays as it was."""
    domain = (settings.mail_domain or "").rstrip(".") + "."
    try:
        key = dns_settings.load_tsig(settings.tsig_file)
        primary = dns_update.primary_server(zone, servers, settings.dns_server)
        held = []
        for rtype in ("A", "AAAA"):
            values, ttl = dns_update.own_rrset(primary, domain, rtype)
            held.append(dns_update.RecordChange(domain, rtype, ttl or 0, values, values))
        dns_update.check_update_allowed(primary, zone, held, key)
    except (MigrateError, SettingsError) as e:
        return Check("FAIL", "DNS update", str(e))
    return Check(
        "PASS",
        "DNS update",
        f"{primary} takes updates of {zone} signed with the TSIG key {key.name} "
        f"({key.algorithm}, from {key.source})",
    )
