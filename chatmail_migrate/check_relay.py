"""check-relay: does the relay on the new host serve as the old one did?

``migrate`` runs it right after enable-mail; run by hand it can be repeated at any
time. One line per check, PASS, WARN or FAIL, as preflight's. It changes nothing on
any host and creates no account: no message is sent or delivered (LMTP is asked
about recipients and the transaction dropped; OpenDKIM is asked to sign a test
message through its milter socket, which queues nothing), and no login is tried
(doveauth creates an account at a first login) except ``--probe-account``'s, to an
account that exists on new.

The checks run on the new host, over the tool's SSH connection, in one command,
against its own listeners: a firewall in front of it is not seen. What old ran and
listened on, its certificate and its mail queue are recorded in the journal at
disable-mail (:func:`record_old_state` before mail goes off there,
:func:`record_old_queue` once Postfix stopped); the DKIM record is asked of the
domain's authoritative nameservers.
"""

from __future__ import annotations

import getpass
import hashlib
import ipaddress
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

from . import audit, dnscheck
from .certificates import (
    certificate_facts,
    expected_certificate,
    names_domain,
    renewed_after_move,
)
from .commands import parse_sections
from .dkim import dkim_tags, dkim_verify, same_key
from .errors import MigrateError, SettingsError
from .journal import Journal
from .mail_queue import describe_message, match_queue
from .preflight import Check
from .relay import Relay
from .remote import Runner, path_exists
from .settings import Settings

CERT_WARN_DAYS = 14
# Services a chatmail relay's deploy runs (cmdeploy's ensure_service, releases 1.6-1.12):
# one that ran on old and not on new FAILs; any other service only WARNs (the
# operator's own, which the relay's deploy does not bring).
RELAY_SERVICES = (
    "postfix", "dovecot", "opendkim", "nginx", "doveauth", "chatmaild", "filtermail",
    "chatmail", "iroh-relay", "turnserver", "acmetool", "unbound", "mtail",
    "mta-sts-daemon", "fcgiwrap", "echobot",
)  # fmt: skip
# What a relay listens on for clients and other servers (SMTP, HTTP(S) for the web
# pages, MTA-STS and ACME, submission, IMAP, TURN): one old served and new does not
# FAILs, another port only WARNs. The first three are checked when old's record is missing.
RELAY_PORTS = ("25", "465", "993", "80", "143", "443", "587", "3478")
# Old's queue at disable-mail is recorded message by message up to this many (the
# journal is rewritten at every note); a larger queue is compared for these only.
QUEUE_RECORD_LIMIT = 2000
# Deliveries on new are looked for in its mail log from this long before the
# queue was recorded (the two hosts' clocks may differ a little).
LOG_MARGIN = 3600
# --probe-account's password, when not typed at the prompt (never a flag: a flag's
# value stays in shell history and in the process list).
PROBE_PASSWORD_ENV = "CHATMAIL_PROBE_PASSWORD"


def live_state_command() -> str:
    """The services running and the TCP ports listened on, in sections."""
    return (
        "echo '== services'; systemctl list-units --type=service --state=running "
        "--no-legend --plain 2>/dev/null | awk '{print $1}'; "
        "echo '== listening'; ss -Htln 2>/dev/null | awk '{print $4}'"
    )


def old_state_command(relay: Relay | None) -> str:
    """Old's live state, the SHA-256 of the certificate it serves, and Postfix's
    myhostname (the name its SMTP greeting gives)."""
    cert = shlex.quote(certificate_path(relay))
    return (
        f"{live_state_command()}; echo '== certificate'; "
        f"openssl x509 -in {cert} -outform DER 2>/dev/null | sha256sum | cut -d' ' -f1; "
        "echo '== myhostname'; postconf -h myhostname 2>/dev/null; true"
    )


def listener(local: str) -> str:
    """``PORT`` for a listener reachable from outside, ``lo:PORT`` for a loopback one."""
    address, _, port = local.rpartition(":")
    address = address.strip("[]").split("%")[0]
    try:
        loopback = ipaddress.ip_address(address).is_loopback
    except ValueError:  # "*" and the like: every address
        loopback = False
    return f"lo:{port}" if loopback else port


def parse_live_state(stdout: str) -> tuple[list[str], list[str]]:
    sections = parse_sections(stdout)
    # Per-login units come and go with SSH sessions (the tool's own among them).
    services = sorted(
        {s for s in sections.get("services", []) if not s.startswith(("user@", "user-runtime"))}
    )
    listening = {listener(line) for line in sections.get("listening", [])}
    # A port open to all also serves loopback.
    listening -= {f"lo:{p}" for p in listening if not p.startswith("lo:")}
    return services, sorted(listening, key=_port_order)


def _port_order(item: str) -> tuple[int, int]:
    port = item.removeprefix("lo:")
    return (item.startswith("lo:"), int(port) if port.isdigit() else 0)


# SHA-256 of nothing: what the certificate section says when the file cannot be read.
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def record_old_state(settings: Settings, runner: Runner, journal: Journal | None) -> None:
    """Before disable-mail: what old runs and listens on while it still serves mail,
    the certificate it serves and the name its SMTP greeting gives."""
    result = runner.run("old", old_state_command(settings.relay), hide=True)
    if settings.dry or journal is None:
        return
    services, listening = parse_live_state(result.stdout)
    sections = parse_sections(result.stdout)
    # (Debian's postfix.service only starts the instance that runs: postfix@-.service.)
    mail_on = any(s.startswith(("postfix", "dovecot")) for s in services)
    if not mail_on and journal.services_before_disable():
        # disable-mail run again after mail already went off: keep the live record.
        print("  old host: mail is already off; keeping what was recorded while it ran")
        return
    sha = (sections.get("certificate") or [""])[0]
    certificate = None
    if re.fullmatch(r"[0-9a-f]{64}", sha) and sha != _EMPTY_SHA256:
        certificate = {
            "path": certificate_path(settings.relay), "sha256": sha, "recorded": time.time()
        }  # fmt: skip
    myhostname = (sections.get("myhostname") or [""])[0]
    journal.record_services_before_disable(
        settings.old_host, services, listening, certificate=certificate, myhostname=myhostname
    )
    cert = f"certificate SHA-256 {sha[:16]}…" if certificate else "no certificate file"
    print(f"  old host runs {len(services)} services, listens on {', '.join(listening)}; {cert}")


def record_old_queue(settings: Settings, runner: Runner, journal: Journal | None) -> None:
    """After disable-mail (Postfix stopped: nothing joins the queue any more): every
    message in old's queue, for check-relay to find on new, queued or delivered."""
    params = json.dumps({"mode": "queue", "limit": QUEUE_RECORD_LIMIT}).encode()
    display = "python3 -c PROBE (old's queue: postqueue -j, postcat -hq ID for each Message-ID)"
    stdout = capture_text(runner, "old", f"python3 -c {shlex.quote(PROBE)}", params, display)
    if settings.dry or journal is None:
        return
    try:
        queue = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print("  old host's queue could not be listed: check-relay will not compare it")
        return
    journal.record_queue_at_disable(
        settings.old_host, queue["total"], queue["messages"], recorded=time.time()
    )
    shown = "" if queue["total"] <= QUEUE_RECORD_LIMIT else f" (the first {QUEUE_RECORD_LIMIT})"
    print(f"  old host's queue at disable-mail: {queue['total']} messages recorded{shown}")


def certificate_path(relay: Relay | None) -> str:
    """The certificate the relay serves (chatmaild's config.py ``tls_cert_path``)."""
    if relay and relay.tls_external:
        return relay.tls_external[0]
    if relay and relay.self_signed:
        return "/etc/ssl/certs/mailserver.pem"
    return f"/var/lib/acme/live/{relay.mail_domain if relay else 'DOMAIN'}/fullchain"


# The probe (and old's queue listing): a file of this package, run on the host as
# ``python3 -c SOURCE`` with its parameters on stdin.
PROBE = (Path(__file__).parent / "relay_probe.py").read_text()


def new_host_command() -> str:
    """One command: new's live state, then the probe's JSON (parameters on stdin)."""
    return (
        f"{{ {live_state_command()}; }} </dev/null; echo '== probe'; "
        f"python3 -c {shlex.quote(PROBE)}"
    )


def probe_params(
    settings: Settings,
    queue: dict | None,
    probe_account: str | None = None,
    password: str | None = None,
) -> dict:
    """What the probe is told (JSON on its stdin)."""
    relay, domain = settings.relay, settings.mail_domain or ""
    params = {
        "domain": domain,
        "mailboxes": relay.mailbox_dir if relay else f"/home/vmail/mail/{domain}",
        "cert": certificate_path(relay),
        "ip_only": bool(relay and relay.ip_only),
        "queue_limit": QUEUE_RECORD_LIMIT + 500,
        "senders": sorted({m["sender"] for m in (queue or {}).get("messages", [])}),
        "log_since": (queue or {}).get("recorded", 0) - LOG_MARGIN,
        "probe_account": probe_account or "",
    }
    if probe_account:
        params["password"] = password or ""
    return params


def capture_text(runner: Runner, role: str, command: str, data: bytes, display: str) -> str:
    """The probe's answer: ``data`` (a password, maybe) on its stdin, never on a command line."""
    out = runner.capture(role, command, display, input=data, warn=True)
    return out.read().decode(errors="replace")


def dkim_records(settings: Settings, probe: dict) -> dict[str, dict]:
    """Each DKIM record name opendkim signs the mail domain with, as every authoritative
    nameserver answers it: {name: {"servers": {server: [p, ...]}}} or {"error": ...}."""
    domain = (settings.mail_domain or "").lower()
    item = probe.get("dkim")
    if not isinstance(item, dict) or "keys" not in item:
        return {}
    names = sorted(
        {f"{k['selector']}._domainkey.{domain}" for k in item["keys"] if _for(k, domain)}
    )
    if not names:
        return {}
    try:
        _, servers = dnscheck.authoritative_servers(
            domain, dnscheck.parse_nameservers(settings.nameservers)
        )
        result = {}
        for name in names:
            answers = {}
            for server in servers:
                values = dnscheck.lookup(server, name, "TXT").values
                answers[str(server)] = [dkim_tags(v).get("p", "") for v in values if "p=" in v]
            result[name] = {"servers": answers}
        return result
    except MigrateError as e:
        return {name: {"error": str(e)} for name in names}


def _for(key: dict, domain: str) -> bool:
    return key.get("domain", "").lower().rstrip(".") == domain.rstrip(".")


# -- judging what new answered ---------------------------------------------------------


def _error(item) -> str | None:
    if not isinstance(item, dict):
        return "no answer"
    return item.get("error")


def _relay_service(unit: str) -> bool:
    return unit.split("@")[0].removesuffix(".service").startswith(RELAY_SERVICES)


def check_services(old: dict | None, services: list[str]) -> Check:
    if not old:
        return Check(
            "WARN", "services",
            "the journal holds no record of what old ran before disable-mail (recorded "
            "by migrate and disable-mail): only the relay's usual ports are checked",
        )  # fmt: skip
    missing = [s for s in old["services"] if s not in services]
    ours = [s for s in missing if _relay_service(s)]
    if ours:
        return Check(
            "FAIL", "services",
            f"ran on old before disable-mail, not running on new: {', '.join(ours)}; "
            f"see `systemctl status {ours[0]}` on new",
        )  # fmt: skip
    if missing:
        return Check(
            "WARN", "services",
            f"ran on old before disable-mail, not running on new: {', '.join(missing)} "
            "(not the relay's: install them on new if you need them)",
        )  # fmt: skip
    return Check(
        "PASS", "services",
        f"all {len(old['services'])} services old ran before disable-mail run on new",
    )  # fmt: skip


def check_ports(old: dict | None, listening: list[str]) -> Check:
    wanted = old["listening"] if old else list(RELAY_PORTS[:3])
    have = set(listening) | {f"lo:{p}" for p in listening}  # open to all serves loopback
    gone = [p for p in wanted if p not in have]
    whose = "as old did before disable-mail" if old else "as a relay does"
    ours = [p for p in gone if p in RELAY_PORTS]
    if ours:
        return Check("FAIL", "ports", f"new does not listen on TCP {', '.join(gone)}, {whose}")
    if gone:
        return Check(
            "WARN", "ports",
            f"new does not listen on TCP {', '.join(gone)} ({whose}; not the relay's ports)",
        )  # fmt: skip
    return Check("PASS", "ports", f"new listens on TCP {', '.join(wanted)}, {whose}")


# Where each listener's certificate is configured, for the FAIL line.
SERVED_BY = {
    "IMAP 993": "Dovecot's ssl_cert",
    "submission 465": "Postfix's smtpd_tls_cert_file",
    "SMTP 25": "Postfix's smtpd_tls_cert_file",
    "HTTPS 443": "nginx's ssl_certificate",
}


def _short(sha: str) -> str:
    return f"{sha[:16]}…"


def _served(
    name: str, cert_b64: str | None, expected: tuple[str | None, str], domain: str
) -> Check | None:
    """A FAIL when the served certificate is not the expected one or not for ``domain``."""
    try:
        facts = certificate_facts(cert_b64 or "")
    except ValueError as e:
        return Check("FAIL", name, f"its certificate cannot be read: {e}")
    sha, what = expected
    if sha and facts["sha256"] != sha:
        return Check(
            "FAIL", name,
            f"serves another certificate (SHA-256 {_short(facts['sha256'])}) than {what} "
            f"({_short(sha)}): check {SERVED_BY.get(name, 'its certificate setting')} on "
            "new, then reload it",
        )  # fmt: skip
    if not names_domain(facts["names"], domain):
        return Check(
            "FAIL", name,
            f"its certificate names {', '.join(facts['names']) or 'nothing'}, not {domain}: "
            "clients refuse it",
        )  # fmt: skip
    return None


def check_tls(
    name: str, item, expected: tuple[str | None, str], domain: str, feature: str | None
) -> Check:
    error = _error(item)
    if error:
        hint = ""
        if "timed out" in error and name in ("submission 465", "SMTP 25"):
            hint = (
                " (Postfix throttles a service for 60 s when its processes fail at start: "
                "see `journalctl -u postfix@-` on new)"
            )
        return Check("FAIL", name, f"no TLS session: {error}{hint}")
    if feature and not item.get("auth"):
        return Check("FAIL", name, f"TLS works but {feature} is not offered: clients cannot log in")
    problem = _served(name, item.get("cert"), expected, domain)
    if problem:
        return problem
    offered = f"{feature} offered, " if feature else ""
    return Check("PASS", name, f"TLS, {offered}{expected[1] or 'a certificate'} ({domain})")


def check_https(
    item, old: dict | None, services: list[str], listening: list[str], expected, domain: str
) -> Check | None:
    """443 when nginx runs on new or old listened on it; None otherwise."""
    old_443 = "443" in ((old or {}).get("listening") or [])
    nginx = any(s.startswith("nginx") for s in services)
    if not (old_443 or nginx):
        return None
    if "443" not in listening:
        why = "old listened on it before disable-mail" if old_443 else "nginx runs"
        return Check("FAIL", "HTTPS 443", f"new does not listen on 443 ({why}): see nginx on new")
    return check_tls("HTTPS 443", item, expected, domain, None)


def check_certificate(path: str, cert, old: dict | None, now: float, domain: str) -> Check:
    error = _error(cert)
    if error:
        return Check("FAIL", "certificate", f"{path}: {error}")
    try:
        facts = certificate_facts(cert.get("der", ""))
    except ValueError as e:
        return Check("FAIL", "certificate", f"{path} cannot be read: {e}")
    recorded = ((old or {}).get("certificate") or {}).get("sha256")
    origin = "no record of old's to compare"
    if recorded:
        origin = f"copied from old (SHA-256 {_short(recorded)})"
        if facts["sha256"] != recorded:
            if not renewed_after_move(old, facts):
                return Check(
                    "FAIL", "certificate",
                    f"{path} is not the certificate old had at disable-mail (SHA-256 "
                    f"{_short(facts['sha256'])} on new, {_short(recorded)} on old): copy it "
                    "from old again (copy-data carries it)",
                )  # fmt: skip
            origin = f"renewed on new since the move (SHA-256 {_short(facts['sha256'])})"
    if not names_domain(facts["names"], domain):
        return Check(
            "FAIL", "certificate",
            f"{path} names {', '.join(facts['names']) or 'nothing'}, not {domain}",
        )  # fmt: skip
    days = (facts["not_after"] - now) / 86400
    when = time.strftime("%Y-%m-%d", time.gmtime(facts["not_after"]))
    if days < 0:
        return Check("FAIL", "certificate", f"{path} expired on {when}: renew it")
    if days < CERT_WARN_DAYS:
        return Check(
            "WARN", "certificate",
            f"{path} expires on {when}, in {days:.0f} days: check that it renews on new",
        )  # fmt: skip
    return Check(
        "PASS", "certificate",
        f"{path}, {origin}, for {domain}, valid until {when} ({days:.0f} days)",
    )  # fmt: skip


def check_smtp(
    item, old: dict | None, expected, relay: Relay | None, domain: str, milter_down: bool = False
) -> Check:
    error = _error(item)
    if error:
        return Check("FAIL", "SMTP 25", f"other servers cannot deliver: {error}")
    code = item.get("code", 220)
    greeting = str(item.get("banner", "")).strip()
    if code != 220:
        return Check("FAIL", "SMTP 25", f"greets with {code} {greeting}: other servers go away")
    name = (greeting.split() or [""])[0]
    as_old = (old or {}).get("myhostname")
    ip_only = bool(relay and relay.ip_only)
    if not ip_only and name.lower() != domain.lower() and name != as_old:
        return Check(
            "FAIL", "SMTP 25",
            f"greets as {name or '(nothing)'}, not {domain}: chatmail's main.cf sets "
            f"myhostname = {domain}; see `postconf myhostname` on new",
        )  # fmt: skip
    if not item.get("starttls"):
        return Check(
            "FAIL", "SMTP 25",
            f"220 {name}, but no STARTTLS offered: other servers send in plain text, or "
            "(MTA-STS) not at all; see smtpd_tls_* in /etc/postfix/main.cf on new",
        )  # fmt: skip
    if item.get("starttls_error"):
        why = (
            " (Postfix tempfails every command while its milter does not answer: see DKIM)"
            if milter_down
            else ""
        )
        return Check("FAIL", "SMTP 25", f"STARTTLS fails: {item['starttls_error']}{why}")
    problem = _served("SMTP 25", item.get("cert"), expected, domain if not ip_only else name)
    if problem and not ip_only:
        return problem
    what = expected[1] or "a certificate"
    return Check("PASS", "SMTP 25", f"220 {name}; STARTTLS offered, {what}")


def check_accounts(accounts, lmtp) -> Check:
    error = _error(accounts) or _error(lmtp)
    if error:
        return Check("FAIL", "accounts", f"cannot ask Dovecot's LMTP about recipients: {error}")
    if not accounts["count"]:
        return Check("WARN", "accounts", "no account on new: nothing to deliver to")
    first, known, unknown = accounts["first"], lmtp["known"], lmtp["unknown"]
    if known != 250:
        return Check(
            "FAIL", "accounts",
            f"LMTP refuses {first} ({known}), an account on new: mail for it bounces",
        )  # fmt: skip
    if unknown == 250:
        return Check("WARN", "accounts", "LMTP accepts recipients that have no account")
    return Check(
        "PASS", "accounts",
        f"{accounts['count']} accounts; LMTP ({lmtp['transport']}) accepts {first} and "
        "refuses unknown addresses (nothing delivered)",
    )  # fmt: skip


def _milter_problem(name: str, item, services: list[str]) -> str | None:
    """Why Postfix's milter ``name`` does not answer, with what to run; None when it does."""
    if isinstance(item, str):  # an answer without details
        item = {"answer": item}
    answer = item.get("answer")
    if answer == "ok":
        return None
    opendkim = any(s.startswith("opendkim") for s in services)
    path = item.get("path")
    if path and item.get("exists") is False and opendkim:
        why = (
            f"its socket {path} is gone while opendkim runs (deleted?): "
            "`systemctl restart opendkim` on new makes it again"
        )
    elif path and item.get("exists") is False:
        why = f"no socket {path}, opendkim does not run: `systemctl start opendkim` on new"
    elif not opendkim and "opendkim" in name:
        why = f"{answer}; opendkim does not run: `systemctl start opendkim` on new"
    else:
        why = f"{answer}; see `systemctl status opendkim` on new"
    return (
        f"Postfix's milter {name} does not answer: {why}. Until then outgoing mail is "
        "tempfailed or leaves unsigned"
    )


def check_milters(item, services: list[str], relay: Relay | None) -> Check:
    error = _error(item) if not isinstance(item, dict) or "error" in item else None
    if error:
        return Check("FAIL", "DKIM", f"cannot read Postfix's milters: {error}")
    if not item:
        if relay and relay.ip_only:
            return Check("PASS", "DKIM", "an IP-only relay: chatmail signs nothing")
        return Check("FAIL", "DKIM", "Postfix has no milter: outgoing mail leaves unsigned")
    for name in sorted(item):
        problem = _milter_problem(name, item[name], services)
        if problem:
            return Check("FAIL", "DKIM", problem)
    return Check("PASS", "DKIM", f"Postfix's milters answer: {', '.join(sorted(item))}")


def _when(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else "?"


def check_dkim_key(item, records: dict | None, relay: Relay | None, domain: str) -> Check:
    """opendkim's key for the mail domain: the file its config names is the key DNS
    publishes, and the running opendkim signs with it (a test signature through its
    socket: what it loaded, whatever the files say now)."""
    name = "DKIM key"
    if relay and relay.ip_only:
        return Check("PASS", name, "an IP-only relay: no DKIM key")
    error = _error(item)
    if error:
        return Check("FAIL", name, f"cannot read opendkim's configuration on new: {error}")
    keys = [k for k in item.get("keys", []) if _for(k, domain.lower())]
    if not keys:
        return Check(
            "FAIL", name,
            f"opendkim's configuration (/etc/opendkim.conf, its KeyTable) has no key for "
            f"{domain}: outgoing mail leaves unsigned",
        )  # fmt: skip
    signed = item.get("signed")
    signatures = []
    if isinstance(signed, dict) and not signed.get("error"):
        signatures = [v for n, v in signed.get("added", []) if n.lower() == "dkim-signature"]
    # The key opendkim signed with (its selector, s=), when it names several.
    selector = dkim_tags(signatures[0]).get("s") if signatures else None
    key = next((k for k in keys if k["selector"] == selector), keys[0])
    path, record = key["path"], f"{key['selector']}._domainkey.{domain}"
    if key.get("error"):
        return Check("FAIL", name, f"{path} (opendkim's key for {domain}): {key['error']}")
    answer = (records or {}).get(record)
    published, dns_note = None, ""
    if answer is None:
        dns_note = "DNS not asked"
    elif answer.get("error"):
        dns_note = f"DNS could not be asked ({answer['error']})"
    else:
        values = answer["servers"]
        empty = [s for s, ps in values.items() if not ps]
        if empty:
            return Check(
                "FAIL", name,
                f"{', '.join(empty)} publishes no DKIM record at {record}: receivers cannot "
                f"check the signature; publish the key of {path.removesuffix('.private')}.txt",
            )  # fmt: skip
        other = [s for s, ps in values.items() if not any(same_key(p, key["public"]) for p in ps)]
        if other:
            p = next(iter(values[other[0]]))
            return Check(
                "FAIL", name,
                f"{path} is not the key {other[0]} publishes at {record} (p=…{p[-12:]} in "
                f"DNS, …{key['public'][-12:]} in the file): copy /etc/dkimkeys from old "
                "again, or publish this key",
            )  # fmt: skip
        published = key["public"]
    if not isinstance(signed, dict) or signed.get("error"):
        why = (
            f"its socket {item.get('socket')}: {_error(signed)}"
            if signed
            else "opendkim.conf names no Socket"
        )
        verdict = "is the key DNS publishes" if published else f"is opendkim's key ({dns_note})"
        return Check("WARN", name, f"{path} {verdict}; no test signature: {why}")
    if not signatures:
        return Check(
            "FAIL", name,
            f"opendkim did not sign a test message from postmaster@{domain} (nothing sent; "
            f"it answered {signed.get('reply')!r}): check its SigningTable and Mode",
        )  # fmt: skip
    why_not = dkim_verify(
        signed["headers"], signed["body"], signatures[0], published or key["public"]
    )
    if why_not:
        changed = max(key.get("changed") or 0, item.get("config_changed") or 0)
        since = item.get("started")
        hint = ""
        if since and changed > since:
            hint = (
                f" (it runs since {_when(since)}, before its key or config changed at "
                f"{_when(changed)})"
            )
        return Check(
            "FAIL", name,
            f"opendkim signs with another key than {path}{hint}: {why_not}; run "
            "`systemctl restart opendkim` on new",
        )  # fmt: skip
    if not published:
        return Check(
            "WARN", name, f"opendkim signs with {path}; {dns_note}: not compared with {record}"
        )
    return Check(
        "PASS", name,
        f"opendkim signs with {path}, the key DNS publishes at {record} (a test signature "
        "through its socket, nothing sent)",
    )  # fmt: skip


def check_queue(item, record: dict | None, deliveries) -> Check:
    name = "mail queue"
    error = _error(item)
    if error:
        return Check("FAIL", name, f"postqueue on new: {error}")
    now = f"{item['total']} messages queued on new now"
    if not record:
        return Check(
            "WARN", name,
            f"{now}; the journal holds no record of old's queue at disable-mail (recorded "
            "by migrate and disable-mail): not compared",
        )  # fmt: skip
    if deliveries is not None and _error(deliveries):
        deliveries = {}
    queued, delivered, returned, missing = match_queue(
        record["messages"], item.get("messages", []), deliveries
    )
    total = record["total"]
    partial = (
        f" (the first {len(record['messages'])} recorded)"
        if total > len(record["messages"])
        else ""
    )
    counts = f"{len(queued)} queued, {len(delivered)} delivered"
    if missing:
        shown = ", ".join(describe_message(m) for m in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        return Check(
            "FAIL", name,
            f"{len(missing)} of {total} messages queued on old at disable-mail{partial} are "
            f"neither queued on new nor delivered there ({counts}): {shown}{more}. They are "
            "still in old's "
            "queue (postcat -q ID on old): copy their files into the same queue directory "
            "on new, then `postsuper -s; postqueue -f` there",
        )  # fmt: skip
    if returned:
        shown = ", ".join(f"{describe_message(m)}: {status}" for m, status in returned[:5])
        return Check(
            "WARN", name,
            f"{total} messages queued on old at disable-mail{partial}: {counts}, "
            f"{len(returned)} returned to their sender by new: {shown}",
        )  # fmt: skip
    return Check(
        "PASS", name,
        f"all {total} messages queued on old at disable-mail{partial} are on new: {counts} "
        f"({now})",
    )  # fmt: skip


def check_probe_account(item, address: str) -> Check:
    name = "IMAP login"
    error = _error(item)
    if error:
        hint = ""
        if item and item.get("refused"):
            hint = (
                ": a wrong password, or the account's password file did not come across "
                "(compare it with old's)"
            )
        return Check("FAIL", name, f"{address}: {error}{hint}")
    folders = item.get("mailboxes", [])
    inbox = item.get("inbox")
    return Check(
        "PASS", name,
        f"{address} logged in over IMAP 993: {len(folders)} folders ({', '.join(folders[:6])}), "
        f"INBOX holds {inbox} messages",
    )  # fmt: skip


def check_dns(settings: Settings, journal: Journal | None) -> Check:
    # Imported here: switch_dns and domain_keys import each other, and only work
    # imported in the order actions.py does.
    from .dnscheck import points_at_new

    points = points_at_new(settings, journal)
    domain = settings.mail_domain
    if points:
        return Check("PASS", "DNS", f"every authoritative nameserver sends {domain} to new")
    if points is None:
        return Check("WARN", "DNS", f"not every authoritative nameserver sends {domain} to new yet")
    return Check(
        "WARN", "DNS",
        f"{domain} does not point at new (no switch-dns in the journal, or the records "
        "were not changed): clients still reach the old host",
    )  # fmt: skip


def parse_answer(stdout: str) -> tuple[list[str], list[str], dict]:
    """New's services, listeners and the probe's answers, from its output."""
    head, _, probe_text = stdout.partition("== probe\n")
    services, listening = parse_live_state(head)
    try:
        probe = json.loads(probe_text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        probe = {}
    return services, listening, probe if isinstance(probe, dict) else {}


def evaluate(
    relay: Relay | None,
    old: dict | None,
    stdout: str,
    now: float,
    *,
    domain: str | None = None,
    queue: dict | None = None,
    dkim: dict | None = None,
    probe_account: str | None = None,
) -> list[Check]:
    """The host's checks, from the new host's answer and what the journal recorded at
    disable-mail: ``old`` (old's services, ports, certificate, greeting; None: no
    record) and ``queue`` (old's queue); ``dkim``: the DKIM records DNS publishes."""
    domain = domain or (relay.mail_domain if relay else "")
    services, listening, probe = parse_answer(stdout)
    cert = probe.get("cert_file")
    file_facts = None
    if not _error(cert):
        try:
            file_facts = certificate_facts(cert.get("der", ""))
        except ValueError:
            pass
    expected = expected_certificate(old, file_facts)
    milters = check_milters(probe.get("milters"), services, relay)
    checks = [
        check_services(old, services),
        check_ports(old, listening),
        check_tls("IMAP 993", probe.get("imaps"), expected, domain, "AUTH=PLAIN"),
        check_tls("submission 465", probe.get("smtps"), expected, domain, "AUTH PLAIN"),
        check_https(probe.get("https"), old, services, listening, expected, domain),
        check_certificate(certificate_path(relay), cert, old, now, domain),
        check_smtp(probe.get("smtp"), old, expected, relay, domain, milters.status == "FAIL"),
        check_accounts(probe.get("accounts"), probe.get("lmtp")),
        milters,
        check_dkim_key(probe.get("dkim"), dkim, relay, domain),
        check_queue(probe.get("queue"), queue, probe.get("deliveries")),
    ]
    if probe_account:
        checks.append(check_probe_account(probe.get("probe_account"), probe_account))
    return [c for c in checks if c is not None]


# -- the task --------------------------------------------------------------------------


def probe_password(settings: Settings, runner: Runner, address: str) -> str:
    """--probe-account's password, once the account is known to exist on new (a login
    to an address without one would create it): refused in one line otherwise."""
    relay, domain = settings.relay, settings.mail_domain or ""
    at = f"[{domain}]" if relay and relay.ip_only else domain
    local, _, where = address.rpartition("@")
    if not local or where.lower() != at.lower() or "/" in address or address.startswith("."):
        raise SettingsError(f"--probe-account {address!r} is not an address of {at}")
    mailboxes = relay.mailbox_dir if relay else f"/home/vmail/mail/{domain}"
    path = f"{mailboxes}/{address}/password"
    if settings.dry:
        return ""
    if not path_exists(runner, "new", path):
        raise SettingsError(
            f"--probe-account {address}: no such account on new ({path} is missing); not "
            "logging in, since a first login would create it"
        )
    password = os.environ.get(PROBE_PASSWORD_ENV)
    if password:
        return password
    if not sys.stdin.isatty():
        raise SettingsError(
            f"--probe-account {address}: no password; set {PROBE_PASSWORD_ENV} or run in a "
            "terminal to be asked"
        )
    return getpass.getpass(f"password of {address} (not shown, not logged): ")


def check_relay(
    settings: Settings,
    runner: Runner,
    journal: Journal | None,
    probe_account: str | None = None,
) -> list[Check]:
    """Ask the new host (one command) and judge; [] under --dry."""
    password = probe_password(settings, runner, probe_account) if probe_account else None
    queue = journal.queue_at_disable() if journal else None
    params = probe_params(settings, queue, probe_account, password)
    extra = f", IMAP login as {probe_account}" if probe_account else ""
    display = (
        f"{live_state_command()}; python3 -c PROBE (IMAP 993, submission 465, HTTPS 443, "
        "SMTP 25, LMTP recipients, milters, opendkim's key and a test signature, "
        f"certificate, queue and mail log{extra}; nothing sent)"
    )
    stdout = capture_text(runner, "new", new_host_command(), json.dumps(params).encode(), display)
    del params, password
    if settings.dry:
        return []
    old = journal.services_before_disable() if journal else None
    dkim = dkim_records(settings, parse_answer(stdout)[2])
    checks = evaluate(
        settings.relay, old, stdout, time.time(), domain=settings.mail_domain,
        queue=queue, dkim=dkim, probe_account=probe_account,
    )  # fmt: skip
    checks.append(check_dns(settings, journal))
    for check in checks:
        audit.note(settings, f"check-relay {check.line()}")
    if journal:
        journal.note(
            "relay-checked", host=settings.new_host,
            lines=[c.line() for c in checks],
            failed=[c.name for c in checks if c.status == "FAIL"],
        )  # fmt: skip
    return checks
