"""What check-relay asks of a host: its listeners, services, certificate,
and the probe it runs there.
"""

from __future__ import annotations

import hashlib
import ipaddress
import shlex

from chatmail_migrate import nameservers
from chatmail_migrate.checks.dkim import dkim_tags
from chatmail_migrate.errors import MigrateError
from chatmail_migrate.hosts.commands import parse_sections
from chatmail_migrate.hosts.runner import Runner
from chatmail_migrate.onhost import script
from chatmail_migrate.relay import Relay
from chatmail_migrate.settings import Settings

CERT_WARN_DAYS = 14


# Services a chatmail relay's deploy runs (cmdeploy's ensure_service, releases 1.6-1.12):
# one that ran on old and not on new FAILs; any other service only WARNs (the
# operator's own, which the relay's deploy does not bring).
RELAY_SERVICES = (
    "postfix",
    "dovecot",
    "opendkim",
    "nginx",
    "doveauth",
    "chatmaild",
    "filtermail",
    "chatmail",
    "iroh-relay",
    "turnserver",
    "acmetool",
    "unbound",
    "mtail",
    "mta-sts-daemon",
    "fcgiwrap",
    "echobot",
)


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


def certificate_path(relay: Relay | None) -> str:
    """The certificate the relay serves (chatmaild's config.py ``tls_cert_path``)."""
    if relay and relay.tls_external:
        return relay.tls_external[0]
    if relay and relay.self_signed:
        return "/etc/ssl/certs/mailserver.pem"
    return f"/var/lib/acme/live/{relay.mail_domain if relay else 'DOMAIN'}/fullchain"


# The probe (and old's queue listing): a file of this package, run on the host as
# ``python3 -c SOURCE`` with its parameters on stdin.
PROBE = script("relay_probe")


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
        {f"{k['selector']}._domainkey.{domain}" for k in item["keys"] if key_for_domain(k, domain)}
    )
    if not names:
        return {}
    try:
        _, servers = nameservers.authoritative_servers(
            domain, nameservers.parse_nameservers(settings.nameservers)
        )
        result = {}
        for name in names:
            answers = {}
            for server in servers:
                values = nameservers.lookup(server, name, "TXT").values
                answers[str(server)] = [dkim_tags(v).get("p", "") for v in values if "p=" in v]
            result[name] = {"servers": answers}
        return result
    except MigrateError as e:
        return {name: {"error": str(e)} for name in names}


def key_for_domain(key: dict, domain: str) -> bool:
    return key.get("domain", "").lower().rstrip(".") == domain.rstrip(".")


def error_of(item) -> str | None:
    if not isinstance(item, dict):
        return "no answer"
    return item.get("error")
