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
import json
import os
import sys
import time

from chatmail_migrate import audit
from chatmail_migrate.checks.certificates import certificate_facts, expected_certificate
from chatmail_migrate.checks.check import Check
from chatmail_migrate.checks.relay_state import (
    PROBE_PASSWORD_ENV,
    capture_text,
    certificate_path,
    dkim_records,
    error_of,
    live_state_command,
    new_host_command,
    parse_live_state,
    probe_params,
)
from chatmail_migrate.checks.tls_verdicts import (
    check_certificate,
    check_https,
    check_smtp,
    check_tls,
)
from chatmail_migrate.checks.verdicts import (
    check_accounts,
    check_dkim_key,
    check_dns,
    check_milters,
    check_ports,
    check_probe_account,
    check_queue,
    check_services,
)
from chatmail_migrate.errors import SettingsError
from chatmail_migrate.hosts.runner import Runner, path_exists
from chatmail_migrate.journal import Journal
from chatmail_migrate.relay import Relay
from chatmail_migrate.settings import Settings


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
    if not error_of(cert):
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
        settings.relay,
        old,
        stdout,
        time.time(),
        domain=settings.mail_domain,
        queue=queue,
        dkim=dkim,
        probe_account=probe_account,
    )
    checks.append(check_dns(settings, journal))
    for check in checks:
        audit.note(settings, f"check-relay {check.line()}")
    if journal:
        journal.note(
            "relay-checked",
            host=settings.new_host,
            lines=[c.line() for c in checks],
            failed=[c.name for c in checks if c.status == "FAIL"],
        )
    return checks
