"""check-relay's verdicts: one Check per question, from what the probe saw."""

from __future__ import annotations

import time

from chatmail_migrate.checks.check import Check
from chatmail_migrate.checks.dkim import dkim_tags, dkim_verify, same_key
from chatmail_migrate.checks.mail_queue import describe_message, match_queue
from chatmail_migrate.checks.relay_state import (
    RELAY_PORTS,
    RELAY_SERVICES,
    error_of,
    key_for_domain,
)
from chatmail_migrate.journal import Journal
from chatmail_migrate.nameservers import points_at_new
from chatmail_migrate.relay import Relay
from chatmail_migrate.settings import Settings


def _relay_service(unit: str) -> bool:
    return unit.split("@")[0].removesuffix(".service").startswith(RELAY_SERVICES)


def check_services(old: dict | None, services: list[str]) -> Check:
    if not old:
        return Check(
            "WARN",
            "services",
            "the journal holds no record of what old ran before disable-mail (recorded "
            "by migrate and disable-mail): only the relay's usual ports are checked",
        )
    missing = [s for s in old["services"] if s not in services]
    ours = [s for s in missing if _relay_service(s)]
    if ours:
        return Check(
            "FAIL",
            "services",
            f"ran on old before disable-mail, not running on new: {', '.join(ours)}; "
            f"see `systemctl status {ours[0]}` on new",
        )
    if missing:
        return Check(
            "WARN",
            "services",
            f"ran on old before disable-mail, not running on new: {', '.join(missing)} "
            "(not the relay's: install them on new if you need them)",
        )
    return Check(
        "PASS",
        "services",
        f"all {len(old['services'])} services old ran before disable-mail run on new",
    )


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
            "WARN",
            "ports",
            f"new does not listen on TCP {', '.join(gone)} ({whose}; not the relay's ports)",
        )
    return Check("PASS", "ports", f"new listens on TCP {', '.join(wanted)}, {whose}")


def check_accounts(accounts, lmtp) -> Check:
    error = error_of(accounts) or error_of(lmtp)
    if error:
        return Check("FAIL", "accounts", f"cannot ask Dovecot's LMTP about recipients: {error}")
    if not accounts["count"]:
        return Check("WARN", "accounts", "no account on new: nothing to deliver to")
    first, known, unknown = accounts["first"], lmtp["known"], lmtp["unknown"]
    if known != 250:
        return Check(
            "FAIL",
            "accounts",
            f"LMTP refuses {first} ({known}), an account on new: mail for it bounces",
        )
    if unknown == 250:
        return Check("WARN", "accounts", "LMTP accepts recipients that have no account")
    return Check(
        "PASS",
        "accounts",
        f"{accounts['count']} accounts; LMTP ({lmtp['transport']}) accepts {first} and "
        "refuses unknown addresses (nothing delivered)",
    )


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
    error = error_of(item) if not isinstance(item, dict) or "error" in item else None
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
    error = error_of(item)
    if error:
        return Check("FAIL", name, f"cannot read opendkim's configuration on new: {error}")
    keys = [k for k in item.get("keys", []) if key_for_domain(k, domain.lower())]
    if not keys:
        return Check(
            "FAIL",
            name,
            f"opendkim's configuration (/etc/opendkim.conf, its KeyTable) has no key for "
            f"{domain}: outgoing mail leaves unsigned",
        )
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
                "FAIL",
                name,
                f"{', '.join(empty)} publishes no DKIM record at {record}: receivers cannot "
                f"check the signature; publish the key of {path.removesuffix('.private')}.txt",
            )
        other = [s for s, ps in values.items() if not any(same_key(p, key["public"]) for p in ps)]
        if other:
            p = next(iter(values[other[0]]))
            return Check(
                "FAIL",
                name,
                f"{path} is not the key {other[0]} publishes at {record} (p=…{p[-12:]} in "
                f"DNS, …{key['public'][-12:]} in the file): copy /etc/dkimkeys from old "
                "again, or publish this key",
            )
        published = key["public"]
    if not isinstance(signed, dict) or signed.get("error"):
        why = (
            f"its socket {item.get('socket')}: {error_of(signed)}"
            if signed
            else "opendkim.conf names no Socket"
        )
        verdict = "is the key DNS publishes" if published else f"is opendkim's key ({dns_note})"
        return Check("WARN", name, f"{path} {verdict}; no test signature: {why}")
    if not signatures:
        return Check(
            "FAIL",
            name,
            f"opendkim did not sign a test message from postmaster@{domain} (nothing sent; "
            f"it answered {signed.get('reply')!r}): check its SigningTable and Mode",
        )
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
            "FAIL",
            name,
            f"opendkim signs with another key than {path}{hint}: {why_not}; run "
            "`systemctl restart opendkim` on new",
        )
    if not published:
        return Check(
            "WARN", name, f"opendkim signs with {path}; {dns_note}: not compared with {record}"
        )
    return Check(
        "PASS",
        name,
        f"opendkim signs with {path}, the key DNS publishes at {record} (a test signature "
        "through its socket, nothing sent)",
    )


def check_queue(item, record: dict | None, deliveries) -> Check:
    name = "mail queue"
    error = error_of(item)
    if error:
        return Check("FAIL", name, f"postqueue on new: {error}")
    now = f"{item['total']} messages queued on new now"
    if not record:
        return Check(
            "WARN",
            name,
            f"{now}; the journal holds no record of old's queue at disable-mail (recorded "
            "by migrate and disable-mail): not compared",
        )
    if deliveries is not None and error_of(deliveries):
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
            "FAIL",
            name,
            f"{len(missing)} of {total} messages queued on old at disable-mail{partial} are "
            f"neither queued on new nor delivered there ({counts}): {shown}{more}. They are "
            "still in old's "
            "queue (postcat -q ID on old): copy their files into the same queue directory "
            "on new, then `postsuper -s; postqueue -f` there",
        )
    if returned:
        shown = ", ".join(f"{describe_message(m)}: {status}" for m, status in returned[:5])
        return Check(
            "WARN",
            name,
            f"{total} messages queued on old at disable-mail{partial}: {counts}, "
            f"{len(returned)} returned to their sender by new: {shown}",
        )
    return Check(
        "PASS",
        name,
        f"all {total} messages queued on old at disable-mail{partial} are on new: {counts} ({now})",
    )


def check_probe_account(item, address: str) -> Check:
    name = "IMAP login"
    error = error_of(item)
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
        "PASS",
        name,
        f"{address} logged in over IMAP 993: {len(folders)} folders ({', '.join(folders[:6])}), "
        f"INBOX holds {inbox} messages",
    )


def check_dns(settings: Settings, journal: Journal | None) -> Check:

    points = points_at_new(settings, journal)
    domain = settings.mail_domain
    if points:
        return Check("PASS", "DNS", f"every authoritative nameserver sends {domain} to new")
    if points is None:
        return Check("WARN", "DNS", f"not every authoritative nameserver sends {domain} to new yet")
    return Check(
        "WARN",
        "DNS",
        f"{domain} does not point at new (no switch-dns in the journal, or the records "
        "were not changed): clients still reach the old host",
    )
