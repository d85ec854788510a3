"""DNS, asked of the zone's authoritative servers directly (never a cache).

Nameservers may be given (``--nameserver``/config/env, for split horizons and the
lab): they are then asked for the zone and its NS set; otherwise the system's
resolver finds them. Every record itself is read from each authoritative server.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver

from chatmail_migrate.errors import MigrateError
from chatmail_migrate.hostspec import canonical_address
from chatmail_migrate.journal import Journal
from chatmail_migrate.settings import Settings

TIMEOUT = 3.0


SUGGESTED_TTL = 300


class DNSError(MigrateError):
    """DNS could not be asked, or answered something that stops the step."""


@dataclass(frozen=True)
class Server:
    name: str
    address: str
    port: int = 53

    def __str__(self) -> str:
        return f"{self.name} ({self.address})" if self.name != self.address else self.address


@dataclass
class Answer:
    values: list[str]
    ttl: int | None
    rcode: str = "NOERROR"


def parse_nameservers(text: str | None) -> list[Server]:
    """``ADDR[:PORT],...`` (IPv6 as ``[ADDR]:PORT``) into servers."""
    servers = []
    for item in (text or "").replace(" ", ",").split(","):
        if not item:
            continue
        port = 53
        if item.startswith("["):
            address, _, rest = item[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") else 53
        elif item.count(":") == 1:
            address, _, p = item.partition(":")
            port = int(p)
        else:
            address = item
        servers.append(Server(address, address, port))
    return servers


def ask(server: Server, name: str, rdtype: str) -> dns.message.Message:
    """One non-recursive question to one server; clear errors when it cannot answer."""
    query = dns.message.make_query(name, rdtype)
    query.flags &= ~dns.flags.RD
    try:
        response = dns.query.udp(query, server.address, timeout=TIMEOUT, port=server.port)
        if response.flags & dns.flags.TC:
            response = dns.query.tcp(query, server.address, timeout=TIMEOUT, port=server.port)
    except dns.exception.Timeout:
        raise DNSError(f"nameserver {server} did not answer in {TIMEOUT:.0f}s") from None
    except OSError as e:
        raise DNSError(f"nameserver {server} cannot be asked: {e.strerror or e}") from None
    return response


def lookup(server: Server, name: str, rdtype: str) -> Answer:
    response = ask(server, name, rdtype)
    rcode = dns.rcode.to_text(response.rcode())
    values, ttl = [], None
    want = dns.rdatatype.from_text(rdtype)
    for rrset in response.answer:
        if rrset.rdtype == want:
            ttl = rrset.ttl if ttl is None else min(ttl, rrset.ttl)
            values += [_text(rdata) for rdata in rrset]
    return Answer(sorted(values), ttl, rcode)


def _text(rdata) -> str:
    if rdata.rdtype == dns.rdatatype.TXT:
        return b"".join(rdata.strings).decode()
    return rdata.to_text()


def canonical(values) -> set[str]:
    """Addresses compared as addresses (``2001:DB8:0::42`` is ``2001:db8::42``)."""
    return {canonical_address(value) for value in values}


def published_addresses(domain: str, given: str | None) -> set[str]:
    """Every A and AAAA address the domain's authoritative servers publish, canonical.

    ``given``: the ``--nameserver`` setting. Raises :class:`DNSError` when they
    cannot be asked.
    """
    _, servers = authoritative_servers(domain, parse_nameservers(given))
    answers = address_records(domain, servers).values()
    return canonical(v for answer in answers for t in ("A", "AAAA") for v in answer[t].values)


def answering(servers: list[Server], zone: str) -> tuple[list[Server], list[str]]:
    """Per nameserver, the addresses that answer, and why the others were left out.

    A workstation without IPv6 cannot ask a server's AAAA address; that server still
    counts as long as one of its addresses answers. A server none of whose addresses
    answers keeps them all: the questions asked of it later say what is wrong.
    """
    by_name: dict[str, list[Server]] = {}
    for server in servers:
        by_name.setdefault(server.name, []).append(server)
    kept, left = [], []
    for group in by_name.values():
        if len(group) == 1:
            kept += group
            continue
        ok, bad = [], []
        for server in group:
            try:
                ask(server, zone, "SOA")
                ok.append(server)
            except DNSError as e:
                bad.append(str(e))
        kept += ok or group
        left += bad if ok else []
    return kept, left


def authoritative_servers(
    domain: str, given: list[Server], left_out: list[str] | None = None
) -> tuple[str, list[Server]]:
    """The zone holding ``domain`` and the addresses of all its authoritative servers
    that answer (``left_out`` gets why the others were left out)."""
    zone, servers = _authoritative_servers(domain, given)
    servers, left = answering(servers, zone)
    if left_out is not None:
        left_out += left
    return zone, servers


def _authoritative_servers(domain: str, given: list[Server]) -> tuple[str, list[Server]]:
    if given:
        response = ask(given[0], domain, "SOA")
        zone = None
        for rrset in response.answer + response.authority:
            if rrset.rdtype == dns.rdatatype.SOA:
                zone = rrset.name.to_text()
        if zone is None:
            raise DNSError(f"nameserver {given[0]} is not authoritative for {domain}")
        ns = lookup(given[0], zone, "NS").values
        servers = []
        for name in ns:
            addresses = lookup(given[0], name, "A").values + lookup(given[0], name, "AAAA").values
            port = given[0].port
            servers += [Server(name.rstrip("."), a, port) for a in addresses]
        return zone, servers or given
    try:
        zone = dns.resolver.zone_for_name(domain, lifetime=10).to_text()
        servers = []
        for ns in dns.resolver.resolve(zone, "NS", lifetime=10):
            name = ns.target.to_text()
            for rdtype in ("A", "AAAA"):
                try:
                    answer = dns.resolver.resolve(name, rdtype, lifetime=10)
                except dns.resolver.NoAnswer:
                    continue
                servers += [Server(name.rstrip("."), a.to_text()) for a in answer]
    except dns.exception.DNSException as e:
        raise DNSError(f"cannot find the nameservers of {domain}: {e}") from None
    return zone, servers


def address_records(domain: str, servers: list[Server]) -> dict[Server, dict[str, Answer]]:
    """A and AAAA of ``domain`` as each authoritative server has them."""
    return {s: {t: lookup(s, domain, t) for t in ("A", "AAAA")} for s in servers}


def resolve_host(domain: str, given: list[Server]) -> str:
    """The address the relay's name points at now, read from an authoritative server."""
    _, servers = authoritative_servers(domain, given)
    for server in servers:
        answer = lookup(server, domain, "A")
        if answer.values:
            return answer.values[0]
        answer = lookup(server, domain, "AAAA")
        if answer.values:
            return answer.values[0]
    raise DNSError(f"{domain} has no A or AAAA record at its nameservers")


def wait_for(
    domain: str,
    servers: list[Server],
    want: dict[str, list[str]],
    *,
    timeout: float,
    status=print,
    sleep=time.sleep,
    first_delay: float = 1.0,
    max_delay: float = 30.0,
) -> float:
    """Poll every server, with backoff, until all answer ``want``; seconds waited.

    ``status`` gets one line per round saying which servers are done.
    """
    started = time.monotonic()
    delay = first_delay
    while True:
        done, pending = [], []
        for server in servers:
            try:
                ok = all(
                    canonical(lookup(server, domain, t).values) == canonical(v)
                    for t, v in want.items()
                )
            except DNSError:
                ok = False
            (done if ok else pending).append(server)
        waited = time.monotonic() - started
        marks = " ".join(f"{s.name}:{'✓' if s in done else '…'}" for s in servers)
        status(f"waiting for DNS ({waited:.0f}s): {marks}")
        if not pending:
            return waited
        if waited + delay > timeout:
            raise DNSError(
                f"after {waited:.0f}s, {', '.join(str(s) for s in pending)} still "
                f"{'does' if len(pending) == 1 else 'do'} not answer "
                + "; ".join(f"{t} {', '.join(v) or '(none)'}" for t, v in want.items())
                + f" for {domain}: "
                "check the records there, then rerun switch-dns"
            )
        sleep(delay)
        delay = min(delay * 2, max_delay)


def points_at(domain: str, servers: list[Server], want: dict[str, list[str]]) -> bool | None:
    """Whether ``domain`` points at ``want`` ({"A": [...], "AAAA": [...]}), asked of each
    authoritative server now: True when every one answers exactly that, False when
    none answers any of those values, None when they are mixed."""
    current = address_records(domain, servers)
    if all(
        canonical(a[t].values) == canonical(v) for a in current.values() for t, v in want.items()
    ):
        return True
    values = canonical(v for vs in want.values() for v in vs)
    if not any(canonical(a[t].values) & values for a in current.values() for t in ("A", "AAAA")):
        return False
    return None


def points_at_new(settings: Settings, journal: Journal | None) -> bool | None:
    """Whether the mail domain points at the records this migration asked for, asked of
    the authoritative servers now (never a note): True, False (none answers them, or
    none were asked for), or None (mixed, or the servers cannot be asked)."""
    want = journal.dns_records_asked() if journal else None
    if not want:
        # A change confirmed by a journal that did not keep the records: unknown.
        return None if journal and journal.dns_change_confirmed() else False
    domain = settings.mail_domain or ""
    try:
        _, servers = authoritative_servers(domain, parse_nameservers(settings.nameservers))
        return points_at(domain, servers, want)
    except MigrateError:
        return None
