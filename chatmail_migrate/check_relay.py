"""check-relay: does the relay on the new host serve as the old one did?

``migrate`` runs it right after enable-mail; run by hand it can be repeated at any
time. One line per check, PASS, WARN or FAIL, as preflight's. It changes nothing on
any host: no message is sent or delivered and no account is made (doveauth creates
an account at a first login, so no login is tried; LMTP is asked about recipients
and the transaction is then dropped).

The checks run on the new host, over the tool's SSH connection, against its own
listeners: a firewall in front of it is not seen. What old ran and listened on is
recorded in the journal at disable-mail, just before mail went off there.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
import time

from . import audit
from .commands import parse_sections
from .journal import Journal
from .preflight import Check
from .relay import Relay
from .remote import Runner
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


def live_state_command() -> str:
    """The services running and the TCP ports listened on, in sections."""
    return (
        "echo '== services'; systemctl list-units --type=service --state=running "
        "--no-legend --plain 2>/dev/null | awk '{print $1}'; "
        "echo '== listening'; ss -Htln 2>/dev/null | awk '{print $4}'"
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


def record_old_state(settings: Settings, runner: Runner, journal: Journal | None) -> None:
    """Before disable-mail: what old runs and listens on while it still serves mail."""
    result = runner.run("old", live_state_command(), hide=True)
    if settings.dry or journal is None:
        return
    services, listening = parse_live_state(result.stdout)
    # (Debian's postfix.service only starts the instance that runs: postfix@-.service.)
    mail_on = any(s.startswith(("postfix", "dovecot")) for s in services)
    if not mail_on and journal.services_before_disable():
        # disable-mail run again after mail already went off: keep the live record.
        print("  old host: mail is already off; keeping what was recorded while it ran")
        return
    journal.record_services_before_disable(settings.old_host, services, listening)
    print(f"  old host runs {len(services)} services, listens on {', '.join(listening)}")


def certificate_path(relay: Relay | None) -> str:
    """The certificate the relay serves (chatmaild's config.py ``tls_cert_path``)."""
    if relay and relay.tls_external:
        return relay.tls_external[0]
    if relay and relay.self_signed:
        return "/etc/ssl/certs/mailserver.pem"
    return f"/var/lib/acme/live/{relay.mail_domain if relay else 'DOMAIN'}/fullchain"


# Runs on the new host as root (Debian's python3, stdlib only); prints one JSON object.
PROBE = r"""
import glob, hashlib, imaplib, json, os, smtplib, socket, ssl, subprocess, sys, uuid

p = json.loads(sys.argv[1])
out = {}
tls = ssl.create_default_context()
tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE  # compared by fingerprint


def sha(der):
    return hashlib.sha256(der).hexdigest()


def postconf(*args):
    return subprocess.run(["postconf", *args], capture_output=True, text=True).stdout


def probe(name, fn):
    try:
        out[name] = fn()
    except Exception as e:
        out[name] = {"error": f"{type(e).__name__}: {e}".strip()}


class IMAP(imaplib.IMAP4_SSL):  # the relay's name for SNI, its own listener
    def _create_socket(self, timeout):
        sock = socket.create_connection(("127.0.0.1", 993), timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=p["domain"])


class SMTPS(smtplib.SMTP_SSL):
    def _get_socket(self, host, port, timeout):
        sock = socket.create_connection(("127.0.0.1", port), timeout)
        return self.context.wrap_socket(sock, server_hostname=p["domain"])


def imaps():
    conn = IMAP(p["domain"], 993, ssl_context=tls, timeout=10)
    try:
        return {"cert": sha(conn.sock.getpeercert(True)), "auth": "AUTH=PLAIN" in conn.capabilities}
    finally:
        conn.shutdown()


def smtps():
    with SMTPS(p["domain"], 465, context=tls, timeout=10) as conn:
        conn.ehlo("check-relay")
        mechs = conn.esmtp_features.get("auth", "").upper().split()
        return {"cert": sha(conn.sock.getpeercert(True)), "auth": "PLAIN" in mechs}


def smtp():
    with smtplib.SMTP("127.0.0.1", 25, timeout=10) as conn:
        conn.ehlo("check-relay")
        return {"starttls": conn.has_extn("starttls")}


def spool_path(path):
    return path if path.startswith("/") else os.path.join(p["spool"], path)


def lmtp():
    transport = postconf("-hx", "virtual_transport").strip()
    kind, _, where = transport.partition(":")
    if kind != "lmtp":
        return {"error": f"virtual_transport is {transport!r}, not LMTP"}
    if where.startswith("unix:"):
        conn = smtplib.LMTP(spool_path(where[5:]), timeout=10)
    else:
        host, _, port = where.removeprefix("inet:").rpartition(":")
        conn = smtplib.LMTP(host.strip("[]"), int(port), timeout=10)
    with conn:
        conn.ehlo("check-relay")
        conn.mail("")
        known = conn.rcpt(p["account"])[0] if p["account"] else None
        unknown = conn.rcpt(f"check-relay-{uuid.uuid4().hex[:12]}@{p['domain']}")[0]
        conn.rset()  # no DATA: nothing is delivered
        return {"transport": transport, "known": known, "unknown": unknown}


def milters():
    names = postconf("-hx", "smtpd_milters", "non_smtpd_milters").split()
    names += [line.split("=", 1)[1] for line in postconf("-P").splitlines() if "milters =" in line]
    result = {}
    for name in {m.strip(",") for n in names for m in n.split(",") if m.strip(",")}:
        kind, _, where = name.partition(":")
        try:
            if kind == "unix":
                sock = socket.socket(socket.AF_UNIX)
                sock.settimeout(5)
                sock.connect(spool_path(where))
            else:
                host, _, port = where.removeprefix("inet:").rpartition(":")
                sock = socket.create_connection((host.strip("[]"), int(port)), 5)
            sock.close()
            result[name] = "ok"
        except OSError as e:
            result[name] = str(e)
    return result


def cert_file():
    pem = open(p["cert"]).read()
    der = ssl.PEM_cert_to_DER_cert(pem[: pem.index("-----END CERTIFICATE-----") + 25])
    end = subprocess.run(
        ["openssl", "x509", "-noout", "-enddate", "-in", p["cert"]],
        capture_output=True, text=True, check=True,
    ).stdout.strip().split("=", 1)[1]
    return {"sha256": sha(der), "expires": ssl.cert_time_to_seconds(end)}


def accounts():
    found = sorted(glob.glob(os.path.join(glob.escape(p["mailboxes"]), "*@*", "password")))
    first = os.path.basename(os.path.dirname(found[0])) if found else ""
    return {"count": len(found), "first": first}


def queue():
    lines = subprocess.run(["postqueue", "-j"], capture_output=True, text=True, check=True)
    items = [json.loads(line) for line in lines.stdout.splitlines() if line.strip()]
    return {"total": len(items), "deferred": sum(i.get("queue_name") == "deferred" for i in items)}


p["spool"] = postconf("-h", "queue_directory").strip() or "/var/spool/postfix"
probe("accounts", accounts)
p["account"] = out["accounts"].get("first", "")
for name, fn in (("imaps", imaps), ("smtps", smtps), ("smtp", smtp), ("lmtp", lmtp),
                 ("milters", milters), ("cert_file", cert_file), ("queue", queue)):
    probe(name, fn)
print(json.dumps(out))
"""


def new_host_command(relay: Relay | None, domain: str) -> str:
    """One command: new's live state, then the probe's JSON."""
    params = {
        "domain": domain,
        "mailboxes": relay.mailbox_dir if relay else f"/home/vmail/mail/{domain}",
        "cert": certificate_path(relay),
    }
    return (
        f"{live_state_command()}; echo '== probe'; "
        f"python3 - {shlex.quote(json.dumps(params))} <<'CHECK_RELAY_PROBE'\n{PROBE}\n"
        "CHECK_RELAY_PROBE"
    )


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


def check_tls(name: str, item, cert: dict | None, feature: str) -> Check:
    error = _error(item)
    if error:
        return Check("FAIL", name, f"no TLS session: {error}")
    if not item.get("auth"):
        return Check("FAIL", name, f"TLS works but {feature} is not offered: clients cannot log in")
    if cert and "sha256" in cert and item["cert"] != cert["sha256"]:
        return Check("FAIL", name, "serves another certificate than the relay's file")
    return Check("PASS", name, f"TLS, {feature} offered, the relay's certificate")


def check_certificate(path: str, cert, now: float) -> Check:
    error = _error(cert)
    if error:
        return Check("FAIL", "certificate", f"{path}: {error}")
    days = (cert["expires"] - now) / 86400
    when = time.strftime("%Y-%m-%d", time.gmtime(cert["expires"]))
    if days < 0:
        return Check("FAIL", "certificate", f"{path} expired on {when}: renew it")
    if days < CERT_WARN_DAYS:
        return Check(
            "WARN", "certificate",
            f"{path} expires on {when}, in {days:.0f} days: check that it renews on new",
        )  # fmt: skip
    return Check("PASS", "certificate", f"{path}, valid until {when} ({days:.0f} days)")


def check_smtp(item) -> Check:
    error = _error(item)
    if error:
        return Check("FAIL", "SMTP 25", f"other servers cannot deliver: {error}")
    if not item.get("starttls"):
        return Check("WARN", "SMTP 25", "answers, but offers no STARTTLS")
    return Check("PASS", "SMTP 25", "answers and offers STARTTLS (mail from other servers)")


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


def check_milters(item) -> Check:
    error = _error(item)
    if error:
        return Check("FAIL", "DKIM", f"cannot read Postfix's milters: {error}")
    if not item:
        return Check("FAIL", "DKIM", "Postfix has no milter: outgoing mail leaves unsigned")
    broken = {name: why for name, why in item.items() if why != "ok"}
    if broken:
        name, why = next(iter(broken.items()))
        return Check(
            "FAIL", "DKIM",
            f"Postfix's milter {name} does not answer ({why}): outgoing mail is "
            "tempfailed or unsigned; see `systemctl status opendkim` on new",
        )  # fmt: skip
    return Check("PASS", "DKIM", f"Postfix's milters answer: {', '.join(sorted(item))}")


def check_queue(item) -> Check:
    error = _error(item)
    if error:
        return Check("FAIL", "mail queue", f"postqueue: {error}")
    return Check(
        "PASS", "mail queue",
        f"{item['total']} messages queued ({item['deferred']} deferred, retried by Postfix)",
    )  # fmt: skip


def check_dns(settings: Settings, journal: Journal | None) -> Check:
    # Imported here: switch_dns and domain_keys import each other, and only work
    # imported in the order actions.py does.
    from .switch_dns import points_at_new

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


def evaluate(relay: Relay | None, old: dict | None, stdout: str, now: float) -> list[Check]:
    """The host's checks, from the new host's answer and ``old``, the journal's record of
    what old ran before disable-mail (None: no record)."""
    head, _, probe_text = stdout.partition("== probe\n")
    services, listening = parse_live_state(head)
    try:
        probe = json.loads(probe_text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        probe = {}
    cert_path = certificate_path(relay)
    cert = probe.get("cert_file")
    usable_cert = cert if not _error(cert) else None
    return [
        check_services(old, services),
        check_ports(old, listening),
        check_tls("IMAP 993", probe.get("imaps"), usable_cert, "AUTH=PLAIN"),
        check_tls("submission 465", probe.get("smtps"), usable_cert, "AUTH PLAIN"),
        check_certificate(cert_path, cert, now),
        check_smtp(probe.get("smtp")),
        check_accounts(probe.get("accounts"), probe.get("lmtp")),
        check_milters(probe.get("milters")),
        check_queue(probe.get("queue")),
    ]


def check_relay(settings: Settings, runner: Runner, journal: Journal | None) -> list[Check]:
    """Ask the new host (one command) and judge; [] under --dry."""
    command = new_host_command(settings.relay, settings.mail_domain or "")
    runner.echo(
        f"[new: {runner.host('new')}] $ {live_state_command()}; python3 - (probe: IMAP 993, "
        "submission 465, SMTP 25, LMTP recipients, milters, certificate, queue)"
    )
    result = runner.run("new", command, hide=True, quiet=True)
    if settings.dry:
        return []
    old = journal.services_before_disable() if journal else None
    checks = evaluate(settings.relay, old, result.stdout, time.time())
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
