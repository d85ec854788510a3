"""An outside probe: how long mail was away while a relay moved, as its users and its
peers would have seen it, not as the tool's own log says.

Two views, each in threads of its own (start/stop from tests and benchmarks, the
result a JSON-ready dict):

- host view: every ``interval`` (0.25 s) each host, BY ADDRESS, gets an IMAP login
  on 993 (with a lab account; on both hosts it also searches INBOX for the message
  old accepted last so far), its SMTP greeting read on 25 and on 465 (TLS), and TLS
  with ALPN ``imap`` and ``smtp`` on 443 (upstream's nginx passes those to 993/465
  in every release 1.6-1.12, ``nginx.conf.j2``'s stream map; the lab's stand-in
  configures no nginx, so when old does not serve it at the start 443 is recorded
  as not applicable). A sender delivers a small message with a unique Message-ID to
  the account on old's port 25 every ``interval``, until old has refused for
  ``sender_grace`` seconds (a restart is not the end), noting which old took (250
  after DATA).
- client view (``probe_client.py``): resolves the mail domain through the lab's
  authoritative nameservers, keeps each answer for its TTL like a resolver cache,
  and polls 993/25/465 at the address it holds every 0.5 s.

The window runs from old's last successful IMAP login to the first successful login
on new that already sees the last message old accepted: a greeting, or a login
into a mailbox the data has not reached, does not end it. The result also says
whether both hosts ever served logins at once (new's first login before old's
last), each port's first and last success per host, and whether old's last
message is on new. Times are epoch seconds, so they line up with the stand-in's
run log (``CHATMAIL_LAB_CMDEPLOY_LOG``).

Run beside a test (``Probe.for_lab(lab).start()`` ... ``.stop()``), or in its own
process: ``python -m chatmail_migrate.lab.probe --lab NAME --out FILE`` until
SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
import uuid
from dataclasses import dataclass

from chatmail_migrate.lab.lab import Lab
from chatmail_migrate.lab.probe_checks import Look, greeting, imap_login, submit
from chatmail_migrate.lab.probe_client import (
    CachedResolver,
    ClientView,
    client_summary,
    every,
    longest,
    outages,
)
from chatmail_migrate.lab.seed import account_password, seeded_accounts

HOSTS = ("old", "new")
CHECKS = ("imap993", "smtp25", "smtps465", "alpn443_imap", "alpn443_smtp")
NOT_SERVED_443 = (
    "old served no TLS with ALPN on 443 when the probe started (the lab's cmdeploy "
    "stand-in configures no nginx; upstream's nginx.conf.j2 passes ALPN imap/smtp on 443 "
    "to 993/465 in every release 1.6-1.12)"
)


@dataclass(frozen=True)
class Sample:
    start: float
    end: float
    ok: bool
    detail: str = ""
    searched: str | None = None
    seen: bool | None = None


@dataclass(frozen=True)
class Sent:
    start: float
    end: float
    message_id: str
    accepted: bool
    detail: str = ""


class Probe:
    """Polls ``old`` and ``new`` (addresses) for the relay ``domain`` as ``account``."""

    def __init__(
        self,
        old: str,
        new: str,
        domain: str,
        account: str,
        password: str,
        *,
        nameservers: list[str] | None = None,
        interval: float = 0.25,
        client_interval: float = 0.5,
        timeout: float = 3.0,
        alpn443: bool | None = None,
        send: bool = True,
        sender_grace: float = 10.0,
        client_ttl: float | None = None,
    ):
        self.addresses = {"old": old, "new": new}
        self.domain, self.account, self.password = domain, account, password
        self.interval, self.timeout = interval, timeout
        self.alpn443, self.send, self.sender_grace = alpn443, send, sender_grace
        self.samples: dict[str, dict[str, list[Sample]]] = {h: {} for h in HOSTS}
        self.sent: list[Sent] = []
        self.not_applicable: dict[str, str] = {}
        self.client = None
        if nameservers:
            resolver = CachedResolver(domain, nameservers, ttl=client_ttl, timeout=1.0)
            self.client = ClientView(resolver, account, password, client_interval, timeout)
        self._stop = threading.Event()
        self._sender_done = threading.Event()
        self._refused_since: float | None = None
        self._threads: list[threading.Thread] = []
        self.started = self.stopped = 0.0
        self.final_check: Sample | None = None

    @classmethod
    def for_lab(cls, lab: Lab, account: str | None = None, *, client: bool = True, **kw) -> Probe:
        """A probe of the lab's old and new hosts, as a seeded account (the last one)."""
        account = account or seeded_accounts(lab)[-1]
        nameservers = lab.nameservers().split(",") if client and lab.nameservers() else None
        return cls(
            lab.address("old"),
            lab.address("new"),
            lab.domain,
            account,
            account_password(account),
            nameservers=nameservers,
            **kw,
        )

    # -- the looks ----------------------------------------------------------
    def last_accepted(self) -> Sent | None:
        return next((s for s in reversed(self.sent) if s.accepted), None)

    def _look(self, host: str, check: str) -> Look:
        address, domain, t = self.addresses[host], self.domain, self.timeout
        if check == "smtp25":
            return greeting(address, 25, domain, t, tls=False)
        if check == "smtps465":
            return greeting(address, 465, domain, t, tls=True)
        return greeting(address, 443, domain, t, tls=True, alpn=check.removeprefix("alpn443_"))

    def _sample(self, host: str, check: str) -> Sample:
        start = time.time()
        if check == "imap993":
            last = self.last_accepted()
            searched = last.message_id if last else None
            look = imap_login(
                self.addresses[host],
                self.domain,
                self.account,
                self.password,
                self.timeout,
                message_id=searched,
            )
            return Sample(start, time.time(), look.ok, look.detail, searched, look.seen)
        look = self._look(host, check)
        return Sample(start, time.time(), look.ok, look.detail)

    def _send_one(self) -> None:
        message_id = f"<probe-{len(self.sent)}-{uuid.uuid4().hex[:12]}@probe.lab.invalid>"
        start = time.time()
        look = submit(self.addresses["old"], self.account, message_id, self.timeout)
        self.sent.append(Sent(start, time.time(), message_id, look.ok, look.detail))
        if look.ok:
            self._refused_since = None
        elif self._refused_since is None:
            self._refused_since = start
        # Done once old, having taken mail, refused everything for sender_grace seconds.
        since = self._refused_since
        if self.last_accepted() and since and time.time() - since >= self.sender_grace:
            self._sender_done.set()

    # -- start / stop -------------------------------------------------------
    def start(self) -> Probe:
        self.started = time.time()
        checks = list(CHECKS)
        if self.alpn443 is None:
            served = greeting(
                self.addresses["old"], 443, self.domain, self.timeout, tls=True, alpn="imap"
            )
            if not served.ok:
                self.not_applicable = {c: f"{NOT_SERVED_443}: {served.detail}" for c in CHECKS[3:]}
        elif not self.alpn443:
            self.not_applicable = {c: "not asked for (alpn443=False)" for c in CHECKS[3:]}
        checks = [c for c in checks if c not in self.not_applicable]
        for host in HOSTS:
            for check in checks:
                series: list[Sample] = []
                self.samples[host][check] = series
                self._spawn(f"probe-{host}-{check}", self._poller(host, check, series))
        if self.send:
            self._spawn("probe-sender", self._sender)
        if self.client:
            self.client.start()
        return self

    def _spawn(self, name: str, target) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _poller(self, host: str, check: str, series: list[Sample]):
        return lambda: every(
            self._stop, self.interval, lambda: series.append(self._sample(host, check))
        )

    def _sender(self) -> None:
        stop = threading.Event()

        def one() -> None:
            self._send_one()
            if self._sender_done.is_set() or self._stop.is_set():
                stop.set()

        every(stop, self.interval, one)

    def stop(self) -> dict:
        """Stop every thread; look once more for old's last message on new; the result."""
        self._stop.set()
        self._sender_done.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout * 4)
        if self.client:
            self.client.stop()
        self.stopped = time.time()
        last = self.last_accepted()
        logins = self.samples["new"].get("imap993", [])
        if last and not any(s.seen and s.searched == last.message_id for s in logins):
            self.final_check = self._sample("new", "imap993")
        return self.result()

    def __enter__(self) -> Probe:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the result ---------------------------------------------------------
    def result(self) -> dict:
        """What the probe saw so far (or in all, once stopped), JSON-ready."""
        now = self.stopped or time.time()
        result = {
            "started": self.started,
            "stopped": self.stopped or None,
            "interval": self.interval,
            "hosts": dict(self.addresses),
            "account": self.account,
            "ports": {h: port_summary(self.samples[h], self.not_applicable, now) for h in HOSTS},
            "sender": self._sender_summary(),
            "window": window(self.samples, self.last_accepted(), self.final_check, now),
        }
        if self.client:
            result["client"] = client_summary(self.client, now)
        return result

    def _sender_summary(self) -> dict:
        sent = list(self.sent)
        accepted = [s for s in sent if s.accepted]
        last = accepted[-1] if accepted else None
        refused_after = [s for s in sent if last and s.start >= last.end and not s.accepted]
        return {
            "sent": len(sent),
            "accepted": len(accepted),
            "last_accepted": {"message_id": last.message_id, "t": last.end} if last else None,
            "first_refused_after": (
                {"t": refused_after[0].start, "detail": refused_after[0].detail}
                if refused_after
                else None
            ),
        }


def port_summary(series: dict[str, list[Sample]], not_applicable: dict, now: float) -> dict:
    """Per check: first and last success (end times), counts, and each change of state."""
    out: dict[str, dict] = {}
    for check in CHECKS:
        if check in not_applicable:
            out[check] = {"applicable": False, "why": not_applicable[check]}
            continue
        samples = list(series.get(check, []))
        oks = [s for s in samples if s.ok]
        changes, state = [], None
        for s in samples:
            if s.ok != state:
                state = s.ok
                changes.append({"t": s.start, "ok": s.ok, "detail": s.detail})
        out[check] = {
            "applicable": True,
            "samples": len(samples),
            "ok": len(oks),
            "first_ok": oks[0].end if oks else None,
            "last_ok": oks[-1].end if oks else None,
            "changes": changes[:200],
            "longest_outage": longest(outages([(s.start, s.end, s.ok) for s in samples], now)),
        }
    return out


def window(
    samples: dict[str, dict[str, list[Sample]]],
    last: Sent | None,
    final_check: Sample | None,
    now: float,
) -> dict:
    """From old's last login to new's first login that sees old's last message."""
    old = [s for s in samples["old"].get("imap993", []) if s.ok]
    new = [s for s in samples["new"].get("imap993", []) if s.ok]
    old_last = old[-1].end if old else None
    new_first = new[0].end if new else None
    if last:
        ends = [s for s in new if s.searched == last.message_id and s.seen]
    else:
        ends = new  # nothing was accepted: any login on new ends it
    end = ends[0].end if ends else None
    # After old's last login: a new login before it is overlap, not the end.
    if end is not None and old_last is not None and end < old_last:
        later = [s for s in ends if s.end >= old_last]
        end = later[0].end if later else None
    seconds = end - old_last if end is not None and old_last is not None else None
    on_new = bool(ends) if last else None
    if last and not ends and final_check is not None:
        on_new = bool(final_check.ok and final_check.seen)
    per_port = {}
    for check in CHECKS:
        old_ok = [s.end for s in samples["old"].get(check, []) if s.ok]
        new_ok = [s.end for s in samples["new"].get(check, []) if s.ok]
        if old_ok and new_ok:
            per_port[check] = new_ok[0] - old_ok[-1]
    return {
        "seconds": seconds,
        "open": seconds is None,
        # While open: how long it has lasted so far (since old's last login).
        "so_far": (now - old_last) if seconds is None and old_last is not None else None,
        "old_last_login": old_last,
        "new_first_login": new_first,
        "end": end,
        "both_served": bool(old_last and new_first and new_first < old_last),
        "last_accepted": last.message_id if last else None,
        "last_accepted_at": last.end if last else None,
        "last_accepted_on_new": on_new,
        # new's first success minus old's last, per port (negative: both served).
        "per_port_gap": per_port,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Probe a lab's old and new hosts from outside")
    parser.add_argument("--lab", required=True, help="the lab's name")
    parser.add_argument("--account", help="a seeded account (default: the last one)")
    parser.add_argument("--out", help="write the result here as JSON (default: stdout)")
    parser.add_argument("--no-client", action="store_true", help="host view only")
    parser.add_argument("--seconds", type=float, help="stop after this long")
    args = parser.parse_args(argv)
    lab = Lab.load(args.lab)
    if lab is None:
        raise SystemExit(f"no lab named {args.lab}")
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    probe = Probe.for_lab(lab, args.account, client=not args.no_client).start()
    print(f"probe: started {time.time():.3f}", flush=True)
    done.wait(args.seconds)
    text = json.dumps(probe.stop(), indent=2) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
