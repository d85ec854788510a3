"""check-relay's judgement, from what a new host answers (no hosts needed): each line
PASSes on a relay that serves as old did, and FAILs or WARNs naming what is wrong.
The lab tests (test_relay_works.py) run it against real hosts."""

from __future__ import annotations

import json

from chatmail_migrate.check_relay import evaluate, listener, parse_live_state
from chatmail_migrate.relay import Relay

NOW = 1_800_000_000.0
RELAY = Relay(mail_domain="relay.example.org")
OLD = {
    "services": ["dovecot.service", "opendkim.service", "postfix@-.service", "ssh.service"],
    "listening": ["22", "25", "465", "993", "lo:10080"],
}
STATE = (
    "== services\ndovecot.service\nopendkim.service\npostfix@-.service\nssh.service\n"
    "== listening\n0.0.0.0:22\n[::]:22\n0.0.0.0:25\n*:465\n0.0.0.0:993\n127.0.0.1:10080\n"
)
PROBE = {
    "accounts": {"count": 3, "first": "abcdefghi@relay.example.org"},
    "imaps": {"cert": "aa", "auth": True},
    "smtps": {"cert": "aa", "auth": True},
    "smtp": {"starttls": True},
    "lmtp": {"transport": "lmtp:unix:private/dovecot-lmtp", "known": 250, "unknown": 550},
    "milters": {"unix:opendkim/opendkim.sock": "ok"},
    "cert_file": {"sha256": "aa", "expires": NOW + 60 * 86400},
    "queue": {"total": 1, "deferred": 1},
}


def judge(state: str = STATE, old: dict | None = OLD, **changes) -> dict[str, tuple[str, str]]:
    probe = {**PROBE, **changes}
    checks = evaluate(RELAY, old, f"{state}== probe\n{json.dumps(probe)}\n", NOW)
    return {c.name: (c.status, c.detail) for c in checks}


def test_a_relay_serving_as_old_did_passes_every_line():
    lines = judge()
    assert {status for status, _ in lines.values()} == {"PASS"}, lines
    assert (
        lines["ports"][1]
        == "new listens on TCP 22, 25, 465, 993, lo:10080, as old did before disable-mail"
    )
    assert "accepts abcdefghi@relay.example.org and refuses unknown" in lines["accounts"][1]
    assert lines["certificate"][1].startswith("/var/lib/acme/live/relay.example.org/fullchain")


def test_listeners_and_services_are_parsed():
    seen = ("0.0.0.0:25", "[::]:993", "*:465", "127.0.0.1:53", "[::1]:53")
    assert [listener(x) for x in seen] == ["25", "993", "465", "lo:53", "lo:53"]
    services, listening = parse_live_state(STATE + "0.0.0.0:10080\n")
    assert services == sorted(OLD["services"])
    assert "lo:10080" not in listening and "10080" in listening  # open to all covers loopback


def test_what_old_ran_and_new_does_not_fails():
    state = STATE.replace("opendkim.service\n", "").replace("0.0.0.0:993\n", "")
    lines = judge(state)
    assert lines["services"] == (
        "FAIL",
        "ran on old before disable-mail, not running on new: opendkim.service; "
        "see `systemctl status opendkim.service` on new",
    )
    assert lines["ports"] == (
        "FAIL",
        "new does not listen on TCP 993, as old did before disable-mail",
    )


def test_the_operators_own_service_or_port_only_warns():
    old = {
        "services": [*OLD["services"], "node-exporter.service"],
        "listening": [*OLD["listening"], "9100"],
    }
    lines = judge(old=old)
    assert lines["services"][0] == "WARN" and "node-exporter.service" in lines["services"][1]
    assert lines["ports"][0] == "WARN" and "9100" in lines["ports"][1]


def test_no_record_of_old_checks_the_usual_ports():
    lines = judge(old=None)
    assert lines["services"][0] == "WARN" and "no record" in lines["services"][1]
    assert lines["ports"] == ("PASS", "new listens on TCP 25, 465, 993, as a relay does")


def test_tls_login_and_certificate_problems_fail():
    lines = judge(
        imaps={"error": "ConnectionRefusedError: [Errno 111] Connection refused"},
        smtps={"cert": "bb", "auth": True},
    )
    assert lines["IMAP 993"] == (
        "FAIL",
        "no TLS session: ConnectionRefusedError: [Errno 111] Connection refused",
    )
    assert lines["submission 465"] == ("FAIL", "serves another certificate than the relay's file")
    assert judge(smtps={"cert": "aa", "auth": False})["submission 465"][0] == "FAIL"
    assert judge(cert_file={"sha256": "aa", "expires": NOW - 86400})["certificate"][0] == "FAIL"
    assert judge(cert_file={"sha256": "aa", "expires": NOW + 3 * 86400})["certificate"][0] == "WARN"


def test_delivery_and_signing_problems_fail():
    assert judge(lmtp={**PROBE["lmtp"], "known": 550})["accounts"][0] == "FAIL"
    assert judge(lmtp={**PROBE["lmtp"], "unknown": 250})["accounts"][0] == "WARN"
    assert judge(lmtp={"error": "FileNotFoundError: no socket"})["accounts"][0] == "FAIL"
    dkim = judge(milters={"unix:opendkim/opendkim.sock": "[Errno 111] Connection refused"})["DKIM"]
    assert dkim[0] == "FAIL" and "systemctl status opendkim" in dkim[1]
    assert judge(milters={})["DKIM"] == (
        "FAIL",
        "Postfix has no milter: outgoing mail leaves unsigned",
    )
    assert judge(smtp={"error": "timeout"})["SMTP 25"][0] == "FAIL"


def test_a_host_that_did_not_answer_fails_every_probe_line():
    checks = evaluate(RELAY, OLD, STATE + "== probe\nTraceback (most recent call last):\n", NOW)
    failed = {c.name for c in checks if c.status == "FAIL"}
    assert failed == {
        "IMAP 993",
        "submission 465",
        "certificate",
        "SMTP 25",
        "accounts",
        "DKIM",
        "mail queue",
    }
