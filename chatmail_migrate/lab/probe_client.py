"""The probe's client view: mail as a user's app reaches it, through a resolver cache.

An app does not know the hosts: it resolves the mail domain, and its resolver keeps
each answer for the record's TTL. So after DNS changes, users keep reaching the
address they were handed until that expires, whatever the hosts do. ``ClientView``
plays that: it asks the lab's authoritative nameservers for the domain's A record
only when its cached answer expired, and every ``interval`` seconds tries, at the
address it holds, an IMAP login on 993 and the greetings on 25 and 465 (probe_checks).
``client_summary`` gives the longest stretch users could not reach mail (a round in
which any of the three failed), per port too, and where the cache pointed when.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dns.message
import dns.query
import dns.rdatatype

from chatmail_migrate.lab.probe_checks import Look, greeting, imap_login

PORTS = ("imap993", "smtp25", "smtps465")


@dataclass
class CachedResolver:
    """A resolver cache in front of the zone's authoritative nameservers."""

    domain: str
    nameservers: list[str]
    # A fixed cache time instead of the record's TTL (None: the record's).
    ttl: float | None = None
    timeout: float = 1.0
    address: str | None = None
    expires: float = 0.0
    lookups: list[dict] = field(default_factory=list)

    def resolve(self) -> str | None:
        now = time.time()
        if self.address and now < self.expires:
            return self.address
        for server in self.nameservers:
            try:
                query = dns.message.make_query(self.domain, dns.rdatatype.A)
                reply = dns.query.udp(query, server, timeout=self.timeout)
            except Exception:  # noqa: BLE001 - any failure: ask the next nameserver
                continue
            for rrset in reply.answer:
                if rrset.rdtype == dns.rdatatype.A:
                    self.address = sorted(r.address for r in rrset)[0]
                    ttl = rrset.ttl if self.ttl is None else self.ttl
                    self.expires = now + ttl
                    self.lookups.append({"t": now, "address": self.address, "ttl": ttl})
                    return self.address
        # No answer: a resolver serves nothing once its entry expired.
        self.address = None
        self.lookups.append({"t": now, "address": None, "ttl": None})
        return None


@dataclass
class Round:
    start: float
    end: float
    address: str | None
    looks: dict[str, Look]

    @property
    def ok(self) -> bool:
        return self.address is not None and all(look.ok for look in self.looks.values())


class ClientView:
    """Polls the relay as an app does, in its own thread, until ``stop``."""

    def __init__(
        self,
        resolver: CachedResolver,
        account: str,
        password: str,
        interval: float = 0.5,
        timeout: float = 3.0,
    ):
        self.resolver = resolver
        self.account, self.password = account, password
        self.interval, self.timeout = interval, timeout
        self.rounds: list[Round] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe-client", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout * 4)

    def _round(self) -> Round:
        start = time.time()
        address = self.resolver.resolve()
        domain = self.resolver.domain
        looks: dict[str, Look] = {}
        if address:
            t = self.timeout
            looks["imap993"] = imap_login(address, domain, self.account, self.password, t)
            looks["smtp25"] = greeting(address, 25, domain, t, tls=False)
            looks["smtps465"] = greeting(address, 465, domain, t, tls=True)
        return Round(start, time.time(), address, looks)

    def _run(self) -> None:
        every(self._stop, self.interval, lambda: self.rounds.append(self._round()))


def every(stop: threading.Event, interval: float, action: Callable[[], None]) -> None:
    """Run ``action`` every ``interval`` seconds until ``stop``; a late round starts the
    next at once, without catching up on the ones it missed (no bursts)."""
    next_at = time.monotonic()
    while not stop.is_set():
        try:
            action()
        except Exception as e:  # noqa: BLE001 - a probe that dies measures nothing
            print(f"probe: {threading.current_thread().name}: {type(e).__name__}: {e}")
        next_at += interval
        delay = next_at - time.monotonic()
        if delay < 0:
            next_at, delay = time.monotonic(), 0.0
        if stop.wait(delay):
            return


def outages(samples: list[tuple[float, float, bool]], stopped: float) -> list[dict]:
    """Stretches without success in (start, end, ok) samples: each from the end of the
    last success before it (or the first sample) to the end of the next success, or
    to ``stopped`` when none came (``open``)."""
    found, down_since = [], None
    last_ok_end = samples[0][0] if samples else stopped
    for _start, end, ok in samples:
        if ok:
            if down_since is not None:
                found.append({"from": down_since, "to": end, "seconds": end - down_since})
                down_since = None
            last_ok_end = end
        elif down_since is None:
            down_since = last_ok_end
    if down_since is not None:
        found.append(
            {"from": down_since, "to": stopped, "seconds": stopped - down_since, "open": True}
        )
    return found


def longest(stretches: list[dict]) -> dict | None:
    return max(stretches, key=lambda s: s["seconds"], default=None)


def client_summary(view: ClientView, stopped: float) -> dict:
    rounds = list(view.rounds)
    mail = outages([(r.start, r.end, r.ok) for r in rounds], stopped)
    per_port = {}
    for port in PORTS:
        samples = [(r.start, r.end, bool(r.looks.get(port) and r.looks[port].ok)) for r in rounds]
        per_port[port] = longest(outages(samples, stopped))
    held, addresses = None, []
    for r in rounds:
        if r.address != held:
            held = r.address
            addresses.append({"t": r.start, "address": r.address})
    return {
        "interval": view.interval,
        "rounds": len(rounds),
        "longest_outage": longest(mail),
        "outages": mail,
        "longest_outage_per_port": per_port,
        "addresses": addresses,
        "lookups": view.resolver.lookups[-50:],
    }
