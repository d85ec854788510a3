"""check-relay's verdicts on what clients see first: TLS on each port,
the certificate, the SMTP greeting.
"""

from __future__ import annotations

import time

from chatmail_migrate.checks.certificates import certificate_facts, names_domain, renewed_after_move
from chatmail_migrate.checks.check import Check
from chatmail_migrate.checks.relay_state import (
    CERT_WARN_DAYS,
    error_of,
)
from chatmail_migrate.relay import Relay

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
            "FAIL",
            name,
            f"serves another certificate (SHA-256 {_short(facts['sha256'])}) than {what} "
            f"({_short(sha)}): check {SERVED_BY.get(name, 'its certificate setting')} on "
            "new, then reload it",
        )
    if not names_domain(facts["names"], domain):
        return Check(
            "FAIL",
            name,
            f"its certificate names {', '.join(facts['names']) or 'nothing'}, not {domain}: "
            "clients refuse it",
        )
    return None


def check_tls(
    name: str, item, expected: tuple[str | None, str], domain: str, feature: str | None
) -> Check:
    error = error_of(item)
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
    error = error_of(cert)
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
                    "FAIL",
                    "certificate",
                    f"{path} is not the certificate old had at disable-mail (SHA-256 "
                    f"{_short(facts['sha256'])} on new, {_short(recorded)} on old): copy it "
                    "from old again (copy-data carries it)",
                )
            origin = f"renewed on new since the move (SHA-256 {_short(facts['sha256'])})"
    if not names_domain(facts["names"], domain):
        return Check(
            "FAIL",
            "certificate",
            f"{path} names {', '.join(facts['names']) or 'nothing'}, not {domain}",
        )
    days = (facts["not_after"] - now) / 86400
    when = time.strftime("%Y-%m-%d", time.gmtime(facts["not_after"]))
    if days < 0:
        return Check("FAIL", "certificate", f"{path} expired on {when}: renew it")
    if days < CERT_WARN_DAYS:
        return Check(
            "WARN",
            "certificate",
            f"{path} expires on {when}, in {days:.0f} days: check that it renews on new",
        )
    return Check(
        "PASS",
        "certificate",
        f"{path}, {origin}, for {domain}, valid until {when} ({days:.0f} days)",
    )


def check_smtp(
    item, old: dict | None, expected, relay: Relay | None, domain: str, milter_down: bool = False
) -> Check:
    error = error_of(item)
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
            "FAIL",
            "SMTP 25",
            f"greets as {name or '(nothing)'}, not {domain}: chatmail's main.cf sets "
            f"myhostname = {domain}; see `postconf myhostname` on new",
        )
    if not item.get("starttls"):
        return Check(
            "FAIL",
            "SMTP 25",
            f"220 {name}, but no STARTTLS offered: other servers send in plain text, or "
            "(MTA-STS) not at all; see smtpd_tls_* in /etc/postfix/main.cf on new",
        )
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
