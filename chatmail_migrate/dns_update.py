"""Changing the mail domain's address records for the operator: RFC 2136 dynamic
updates, signed with TSIG, sent to the zone's primary.

Only the address records that point at the old host change, on the names the relay's
own zone file gives addresses to (every release 1.6-1.12: the mail domain; ``mta-sts.``
and ``www.`` are CNAMEs there, and follow it, unless an operator gave them addresses
of their own). Every update carries, as its prerequisite, what the tool read: an edit
made meanwhile by someone else makes the server refuse it, and nothing changes.

The key (``dns_settings``) signs each update; its secret goes nowhere else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataset
import dns.rdatatype
import dns.tsig
import dns.update

from chatmail_migrate.dns_settings import TsigKey
from chatmail_migrate.nameservers import TIMEOUT, DNSError, Server, canonical, parse_nameservers

# The names with address records in the zone every release's ``cmdeploy dns`` prints
# (1.6/1.7 chatmail.zone.j2, 1.8+ dns.py), relative to the mail domain.
ADDRESS_NAMES = ("", "mta-sts.", "www.")


@dataclass(frozen=True)
class RecordChange:
    """One RRset: what it holds (as read, the update's prerequisite) and what it gets."""

    name: str
    rtype: str
    ttl: int
    before: list[str]
    after: list[str]

    def reverse(self) -> RecordChange:
        return RecordChange(self.name, self.rtype, self.ttl, self.after, self.before)


def own_rrset(server: Server, name: str, rtype: str) -> tuple[list[str], int | None]:
    """The ``rtype`` records owned by ``name`` itself (not those a CNAME leads to)."""
    query = dns.message.make_query(name, rtype)
    query.flags &= ~dns.flags.RD
    try:
        response = dns.query.tcp(query, server.address, timeout=TIMEOUT, port=server.port)
    except (OSError, dns.exception.DNSException) as e:
        raise DNSError(f"the zone's primary {server} cannot be asked: {e}") from None
    owner = dns.name.from_text(name)
    want = dns.rdatatype.from_text(rtype)
    for rrset in response.answer:
        if rrset.name == owner and rrset.rdtype == want:
            return sorted(r.to_text() for r in rrset), rrset.ttl
    return [], None


def plan_changes(
    domain: str, primary: Server, old: dict[str, list[str]], want: dict[str, list[str]]
) -> list[RecordChange]:
    """The RRsets to change: the mail domain's A/AAAA to ``want``, and those of
    ``mta-sts.``/``www.`` that have addresses of their own, all of them old's
    (``old``), likewise. Read from the primary, the server that takes the update."""
    old_addresses = canonical(v for vs in old.values() for v in vs)
    changes = []
    for prefix in ADDRESS_NAMES:
        name = f"{prefix}{domain}".rstrip(".") + "."
        held = {t: own_rrset(primary, name, t) for t in ("A", "AAAA")}
        if prefix:
            addresses = canonical(v for values, _ in held.values() for v in values)
            # A CNAME (no addresses of its own) follows the domain; addresses that are
            # not all old's belong to something else.
            if not addresses or not addresses <= old_addresses:
                continue
        ttls = [ttl for _, ttl in held.values() if ttl is not None]
        for rtype, values in want.items():
            before, ttl = held[rtype]
            if canonical(before) == canonical(values):
                continue
            changes.append(
                RecordChange(name, rtype, ttl or min(ttls, default=300), before, sorted(values))
            )
    return changes


def _with_prerequisites(zone: str, changes: list[RecordChange]) -> dns.update.UpdateMessage:
    """An update whose every RRset must hold what was read, or the server refuses it all."""
    update = dns.update.UpdateMessage(zone)
    for change in changes:
        name = dns.name.from_text(change.name)
        if change.before:
            # RFC 2136 2.4.2, value dependent: exactly these records (TTL 0 in a
            # prerequisite).
            update.present(name, dns.rdataset.from_text_list("IN", change.rtype, 0, change.before))
        else:
            update.absent(name, change.rtype)
    return update


def update_message(
    zone: str, changes: list[RecordChange], key: TsigKey
) -> dns.update.UpdateMessage:
    """The update: each RRset as read, then its new values (or none: it goes)."""
    update = _with_prerequisites(zone, changes)
    for change in changes:
        name = dns.name.from_text(change.name)
        if change.after:
            update.replace(name, change.ttl, change.rtype, *change.after)
        else:
            update.delete(name, change.rtype)
    update.use_tsig(key.for_dnspython())
    return update


SOMEONE_ELSE = "the records changed since the tool read them (someone else edited the zone)"
REFUSED_WHY = {
    "YXRRSET": SOMEONE_ELSE,
    "NXRRSET": SOMEONE_ELSE,
    "NXDOMAIN": SOMEONE_ELSE,
    "YXDOMAIN": SOMEONE_ELSE,
    "NOTAUTH": "the server does not accept this key for the zone (key name, secret, "
    "algorithm, or its update ACL)",
    "REFUSED": "the server refuses updates for the zone from this key or address (its update ACL)",
    "NOTZONE": "a name is outside the zone",
}


def _send(server: Server, update: dns.update.UpdateMessage, key: TsigKey, what: str) -> None:
    """Send ``update``; a clear error (never the secret) when it did not apply."""
    try:
        response = dns.query.tcp(update, server.address, timeout=10, port=server.port)
    except dns.tsig.PeerError as e:
        raise DNSError(
            f"{server} rejected the TSIG key {key.name} from {key.source} "
            f"({type(e).__name__}): check its name, secret and algorithm ({key.algorithm})"
        ) from None
    except dns.tsig.BadSignature:
        raise DNSError(
            f"{server}'s answer is not signed with the TSIG key {key.name} from "
            f"{key.source}: check the secret"
        ) from None
    except (OSError, dns.exception.DNSException) as e:
        raise DNSError(f"{what} could not be sent to {server}: {e}") from None
    rcode = dns.rcode.to_text(response.rcode())
    if rcode != "NOERROR":
        why = REFUSED_WHY.get(rcode, "the server did not apply it")
        raise DNSError(f"{server} answered {rcode} to {what}: {why}")


def send_update(server: Server, zone: str, changes: list[RecordChange], key: TsigKey) -> None:
    _send(server, update_message(zone, changes, key), key, f"the update of zone {zone}")


def check_update_allowed(
    server: Server, zone: str, changes: list[RecordChange], key: TsigKey
) -> None:
    """The update's prerequisites alone: the server checks the key, its update ACL and
    that the records are as read, and changes nothing."""
    update = _with_prerequisites(zone, changes)
    update.use_tsig(key.for_dnspython())
    _send(server, update, key, f"a test update of zone {zone} (prerequisites only)")


def primary_server(zone: str, servers: list[Server], given: str | None) -> Server:
    """Where updates go: ``--dns-server`` when given, else the zone's SOA MNAME, found
    through its authoritative servers (a hidden primary needs ``--dns-server``)."""
    if given:
        return parse_nameservers(given)[0]
    for server in servers:
        query = dns.message.make_query(zone, "SOA")
        query.flags &= ~dns.flags.RD
        try:
            response = dns.query.udp(query, server.address, timeout=TIMEOUT, port=server.port)
        except (OSError, dns.exception.DNSException):
            continue
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.SOA:
                mname = rrset[0].mname.to_text()
                listed = [s for s in servers if s.name.rstrip(".") == mname.rstrip(".")]
                if listed:
                    return listed[0]
                raise DNSError(
                    f"the zone {zone}'s primary (SOA MNAME) is {mname}, which is not among "
                    "its nameservers: give its address with --dns-server ADDR[:PORT]"
                )
    raise DNSError(f"no nameserver of {zone} answers its SOA: give --dns-server ADDR[:PORT]")


def as_journal(server: Server, zone: str, changes: list[RecordChange]) -> dict:
    """What the journal keeps of an update (records only: never the key)."""
    return {
        "server": (
            f"[{server.address}]:{server.port}"
            if ":" in server.address
            else f"{server.address}:{server.port}"
        ),
        "zone": zone,
        "changes": [asdict(c) for c in changes],
    }


def from_journal(event: dict) -> tuple[Server, str, list[RecordChange]]:
    server = parse_nameservers(event["server"])[0]
    return server, event["zone"], [RecordChange(**c) for c in event["changes"]]
