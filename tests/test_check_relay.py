"""check-relay's judgement, from what a new host answers (no hosts needed): each line
PASSes on a relay that serves as old did, and FAILs or WARNs naming what is wrong.
The lab tests (test_relay_works.py) run it against real hosts."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from types import SimpleNamespace

import dkim
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from chatmail_migrate.checks import check_relay, relay_state
from chatmail_migrate.checks.certificates import certificate_facts, expected_certificate
from chatmail_migrate.checks.check import Check
from chatmail_migrate.checks.check_relay import evaluate
from chatmail_migrate.checks.dkim import dkim_tags, dkim_verify
from chatmail_migrate.checks.mail_queue import match_queue
from chatmail_migrate.checks.relay_state import (
    listener,
    parse_live_state,
    probe_params,
)
from chatmail_migrate.errors import SettingsError
from chatmail_migrate.hosts.runner import Result, Runner
from chatmail_migrate.relay import Relay
from chatmail_migrate.settings import Settings
from chatmail_migrate.steps import record_old

NOW = 1_800_000_000.0
DOMAIN = "relay.example.org"
RELAY = Relay(mail_domain=DOMAIN)
DAY = 86400
_KEY = ec.generate_private_key(ec.SECP256R1())


def certificate(
    names=(DOMAIN,), *, issued: float = NOW - 30 * DAY, days: int = 90, ca: bool = False
) -> str:
    """A certificate (base64 DER, as the probe sends it): self-signed, or by a CA."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "x")])
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Lab CA")]) if ca else subject
    start = datetime.datetime.fromtimestamp(issued, datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    der = builder.sign(_KEY, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    return base64.b64encode(der).decode()


def sha(cert: str) -> str:
    return hashlib.sha256(base64.b64decode(cert)).hexdigest()


CERT = certificate()
OLD = {
    "services": ["dovecot.service", "opendkim.service", "postfix@-.service", "ssh.service"],
    "listening": ["22", "25", "465", "993", "lo:10080"],
    "certificate": {"path": "/x", "sha256": sha(CERT), "recorded": NOW - DAY},
    "myhostname": DOMAIN,
}
STATE = (
    "== services\ndovecot.service\nopendkim.service\npostfix@-.service\nssh.service\n"
    "== listening\n0.0.0.0:22\n[::]:22\n0.0.0.0:25\n*:465\n0.0.0.0:993\n127.0.0.1:10080\n"
)

# A test signature the lab's opendkim (2.11, Debian 12) made through its milter
# socket, and its public key as the lab's nameservers publish it.
LAB_DKIM_KEY = (
    "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAzxlWAW0+wb8vqmnVIuueK2+Igv9EjZMcLSIHdH/pMt"
    "tCPdXHYBEzXro7kQC3kkoGLd6EnQtnxarcYUUcVDRlny7wcxmBHO5RjZI8hZX2yl9xparGvF0u1g8AtcWFgFwZ"
    "/MaUfvVhYXQkDDUxc8SmDQ3orPNr+KSWE7E6zaOr0Cs93zrcc3J//poPbGAATqZsDToLF36467ccE4EEbIXiBk"
    "dnNttd92/JuSsJVbIvD4ZQ8V3AdWpqYXFDYFrW+aovi8gvYldJbWTeljOziAGaY7yBJdzSiPwBJxn2ryPHEYEEX"
    "RfwJAxjrb5skgsYlbzhtDsAwYXrR5QuS1D+D78REQIDAQAB"
)
LAB_DOMAIN = "relay.lab.example"
LAB_SIGNED = {
    "headers": [
        ["From", f"<postmaster@{LAB_DOMAIN}>"],
        ["To", f"<postmaster@{LAB_DOMAIN}>"],
        ["Subject", "check-relay DKIM test (never sent)"],
        ["Date", "Mon, 30 Nov 2026 06:18:23 +0000"],
        ["Message-ID", f"<check-relay@{LAB_DOMAIN}>"],
    ],
    "body": "check-relay: a DKIM signing test, never sent\r\n",
    "added": [
        [
            "DKIM-Signature",
            " v=1; a=rsa-sha256; c=relaxed/simple; d=relay.lab.example;\n\ts=opendkim; "
            "t=1796019629;\n\tbh=6KxOY/mBAr3tp3pkj82lsvxk8OwuekFMUC8qvULa1Tg=;\n\t"
            "h=From:To:Subject:Date;\n\tb=Z/dbVcPnATPgDMdFqLMDE32LiH2JIU+4tMnzi/tL6FnkH64ebJx"
            "SjZCD9vDVBgwEn\n\t nrnlG89sb6iToeUDfJLOZEErIT7v5TpjGkIyg6XBjfU5dQkF0xTrtvPqcuqIh"
            "5DgAa\n\t LK6OPbd9LjHUEPz3KTaAeDP/8E/LCoNygSQy5AqOCBSIr2WiYa29KqbLSbtEu4+1pe\n\t"
            " 88Sq1udlQKNB4qd+CaSrnSLXYAL54Hu+tzucyMEGg1me6HvtbIGTTold9JCqYMWAYF\n\t 9oPEXeBv"
            "smHoksIomkQ9BeOoZSRZaqmr1EmWbk/Jz6VdNuqeykVtwsVWt6PxJb5iZV\n\t VjQYPnsXkqlDg==",
        ]
    ],
    "reply": "a",
}
DKIM_RECORD = f"opendkim._domainkey.{DOMAIN}"
DKIM_KEY = {
    "domain": DOMAIN,
    "selector": "opendkim",
    "path": "/etc/dkimkeys/opendkim.private",
    "public": LAB_DKIM_KEY,
    "changed": NOW - 2 * DAY,
}
DKIM = {
    "keys": [DKIM_KEY],
    "socket": "local:/var/spool/postfix/opendkim/opendkim.sock",
    "started": NOW - DAY,
    "config_changed": NOW - 2 * DAY,
    "signed": LAB_SIGNED,
}
DNS = {DKIM_RECORD: {"servers": {"ns1 (192.0.2.53)": [LAB_DKIM_KEY]}}}

QUEUED_ON_OLD = {
    "id": "06486320964",
    "queue": "deferred",
    "sender": f"echo@{DOMAIN}",
    "size": 385,
    "arrival": 1796019503,
    "recipients": ["someone@unreachable.invalid"],
    "message_id": f"<20261130061823.06486320964@{DOMAIN}>",
}
QUEUE = {"total": 1, "messages": [QUEUED_ON_OLD], "recorded": NOW - DAY}
PROBE = {
    "accounts": {"count": 3, "first": f"abcdefghi@{DOMAIN}"},
    "imaps": {"cert": CERT, "auth": True},
    "smtps": {"cert": CERT, "auth": True},
    "https": {"error": "ConnectionRefusedError: [Errno 111] Connection refused"},
    "smtp": {"code": 220, "banner": f"{DOMAIN} ESMTP Postfix", "starttls": True, "cert": CERT},
    "lmtp": {"transport": "lmtp:unix:private/dovecot-lmtp", "known": 250, "unknown": 550},
    "milters": {
        "unix:opendkim/opendkim.sock": {
            "path": "/var/spool/postfix/opendkim/opendkim.sock",
            "exists": True,
            "answer": "ok",
        }
    },
    "cert_file": {"der": CERT},
    # Postfix renamed the queue file on new: another ID, the same message.
    "queue": {"total": 1, "messages": [{**QUEUED_ON_OLD, "id": "4XyZ12abc"}]},
    "dkim": DKIM,
    "deliveries": {"from": [], "to": []},
}


def judge(
    state: str = STATE,
    old: dict | None = OLD,
    *,
    old_queue: dict | None = QUEUE,
    dns: dict | None = DNS,
    relay: Relay = RELAY,
    account: str | None = None,
    **changes,
) -> dict[str, tuple[str, str]]:
    """The lines for new's answer: PROBE with ``changes``; old's record, old's queue
    (``old_queue``) and the DKIM records (``dns``) as the journal and DNS gave them."""
    probe = {**PROBE, **changes}
    checks = evaluate(
        relay,
        old,
        f"{state}== probe\n{json.dumps(probe)}\n",
        NOW,
        queue=old_queue,
        dkim=dns,
        probe_account=account,
    )
    return {c.name: (c.status, c.detail) for c in checks}


def test_a_relay_serving_as_old_did_passes_every_line():
    lines = judge()
    assert {status for status, _ in lines.values()} == {"PASS"}, lines
    assert list(lines) == [
        "services",
        "ports",
        "IMAP 993",
        "submission 465",
        "certificate",
        "SMTP 25",
        "accounts",
        "DKIM",
        "DKIM key",
        "mail queue",
    ]
    # Each line names what it checked.
    assert all(port in lines["ports"][1] for port in OLD["listening"])
    assert f"/var/lib/acme/live/{DOMAIN}/fullchain" in lines["certificate"][1]
    assert f"abcdefghi@{DOMAIN}" in lines["accounts"][1]
    assert DKIM_RECORD in lines["DKIM key"][1]
    # What the listeners must serve: the certificate old served at disable-mail.
    facts = certificate_facts(CERT)
    assert expected_certificate(OLD, facts)[0] == sha(CERT)


def test_listeners_and_services_are_parsed():
    seen = ("0.0.0.0:25", "[::]:993", "*:465", "127.0.0.1:53", "[::1]:53")
    assert [listener(x) for x in seen] == ["25", "993", "465", "lo:53", "lo:53"]
    services, listening = parse_live_state(STATE + "0.0.0.0:10080\n")
    assert services == sorted(OLD["services"])
    assert "lo:10080" not in listening and "10080" in listening  # open to all covers loopback


def test_what_old_ran_and_new_does_not_fails():
    state = STATE.replace("opendkim.service\n", "").replace("0.0.0.0:993\n", "")
    lines = judge(state)
    assert lines["services"][0] == "FAIL" and "opendkim.service" in lines["services"][1]
    assert lines["ports"][0] == "FAIL" and "993" in lines["ports"][1]


def test_the_operators_own_service_or_port_only_warns():
    old = {
        **OLD,
        "services": [*OLD["services"], "node-exporter.service"],
        "listening": [*OLD["listening"], "9100"],
    }
    lines = judge(old=old)
    assert lines["services"][0] == "WARN" and "node-exporter.service" in lines["services"][1]
    assert lines["ports"][0] == "WARN" and "9100" in lines["ports"][1]


def test_no_record_of_old_checks_the_usual_ports_and_the_certificate_file():
    lines = judge(old=None, old_queue=None)
    # What records old's state: the step to run (disable-mail, or migrate).
    assert lines["services"][0] == "WARN" and "disable-mail" in lines["services"][1]
    assert lines["ports"][0] == "PASS"
    assert lines["IMAP 993"][0] == "PASS"
    assert lines["certificate"][0] == "PASS"
    assert lines["mail queue"][0] == "WARN" and "disable-mail" in lines["mail queue"][1]
    # The usual ports: 993 must listen, 22 and old's own ports need not.
    without_993 = STATE.replace("0.0.0.0:993\n", "")
    assert judge(without_993, old=None, old_queue=None)["ports"][0] == "FAIL"
    without_22 = STATE.replace("0.0.0.0:22\n[::]:22\n", "")
    assert judge(without_22, old=None, old_queue=None)["ports"][0] == "PASS"
    # The listeners are held to the relay's certificate file on new.
    other = certificate()
    served = {"cert": other, "auth": True}
    assert judge(old=None, old_queue=None, imaps=served)["IMAP 993"][0] == "FAIL"
    lines = judge(old=None, old_queue=None, imaps=served, cert_file={"der": other})
    assert lines["IMAP 993"][0] == lines["certificate"][0] == "PASS"


def test_tls_login_and_certificate_problems_fail():
    other = certificate()
    lines = judge(
        imaps={"error": "ConnectionRefusedError: [Errno 111] Connection refused"},
        smtps={"cert": other, "auth": True},
    )
    # The probe's own error is shown; a wrong certificate names the setting to fix.
    assert lines["IMAP 993"][0] == "FAIL" and "Connection refused" in lines["IMAP 993"][1]
    assert lines["submission 465"][0] == "FAIL"
    assert "smtpd_tls_cert_file" in lines["submission 465"][1]
    assert judge(smtps={"cert": CERT, "auth": False})["submission 465"][0] == "FAIL"
    expired = certificate(issued=NOW - 100 * DAY)
    old = {**OLD, "certificate": {**OLD["certificate"], "sha256": sha(expired)}}
    assert judge(old=old, cert_file={"der": expired})["certificate"][0] == "FAIL"
    soon = certificate(issued=NOW - 80 * DAY)
    old = {**OLD, "certificate": {**OLD["certificate"], "sha256": sha(soon)}}
    assert judge(old=old, cert_file={"der": soon})["certificate"][0] == "WARN"


def test_a_certificate_for_another_name_fails():
    stranger = certificate(("mail.other.example",))
    old = {**OLD, "certificate": {**OLD["certificate"], "sha256": sha(stranger)}}
    served = {"cert": stranger, "auth": True}
    lines = judge(old=old, imaps=served, smtps=served, cert_file={"der": stranger})
    assert lines["IMAP 993"][0] == "FAIL" and "mail.other.example" in lines["IMAP 993"][1]
    assert lines["certificate"][0] == "FAIL" and "mail.other.example" in lines["certificate"][1]
    wildcard = certificate(("*.example.org",))
    old = {**OLD, "certificate": {**OLD["certificate"], "sha256": sha(wildcard)}}
    served = {"cert": wildcard, "auth": True}
    assert judge(old=old, imaps=served, cert_file={"der": wildcard})["IMAP 993"][0] == "PASS"


def test_a_certificate_other_than_olds_fails_unless_a_ca_renewed_it_after_the_move():
    # A self-signed certificate put in place of the copied one, services reloaded.
    replaced = certificate(issued=NOW - 3600)
    served = {"cert": replaced, "auth": True}
    lines = judge(
        imaps=served,
        smtps=served,
        cert_file={"der": replaced},
        smtp={**PROBE["smtp"], "cert": replaced},
    )
    for name in ("IMAP 993", "submission 465", "SMTP 25"):
        assert lines[name][0] == "FAIL", name
        assert sha(replaced)[:16] in lines[name][1], name  # the certificate it serves
    assert lines["certificate"][0] == "FAIL" and "copy-data" in lines["certificate"][1]
    # acmetool renewed it on new, weeks after the move: a CA's, issued after the record.
    renewed = certificate(issued=NOW - 3600, ca=True)
    served = {"cert": renewed, "auth": True}
    lines = judge(
        imaps=served,
        smtps=served,
        cert_file={"der": renewed},
        smtp={**PROBE["smtp"], "cert": renewed},
    )
    assert {s for s, _ in lines.values()} == {"PASS"}, lines
    # Once renewed, the renewed one is what every listener must serve: old's fails.
    assert expected_certificate(OLD, certificate_facts(renewed))[0] == sha(renewed)
    still_old = judge(cert_file={"der": renewed}, smtp={**PROBE["smtp"], "cert": renewed})
    assert still_old["IMAP 993"][0] == still_old["submission 465"][0] == "FAIL"
    assert still_old["certificate"][0] == still_old["SMTP 25"][0] == "PASS"
    # A CA's certificate issued before the move is not a renewal.
    older = certificate(issued=NOW - 5 * DAY, ca=True)
    assert judge(cert_file={"der": older})["certificate"][0] == "FAIL"


def test_https_is_checked_when_nginx_runs_or_old_served_it():
    assert "HTTPS 443" not in judge()
    nginx = STATE.replace("ssh.service\n", "ssh.service\nnginx.service\n")
    https = judge(nginx)["HTTPS 443"]
    assert https[0] == "FAIL" and "nginx" in https[1]
    serving = nginx + "0.0.0.0:443\n"
    assert judge(serving, https={"cert": CERT})["HTTPS 443"][0] == "PASS"
    wrong = judge(serving, https={"cert": certificate()})["HTTPS 443"]
    assert wrong[0] == "FAIL" and "ssl_certificate" in wrong[1]
    old = {**OLD, "listening": [*OLD["listening"], "443"]}
    https = judge(old=old)["HTTPS 443"]
    assert https[0] == "FAIL" and "nginx" in https[1]
    assert judge(STATE + "0.0.0.0:443\n", old=old, https={"cert": CERT})["HTTPS 443"][0] == "PASS"


def test_smtp_greets_as_the_mail_domain_and_offers_starttls():
    smtp = PROBE["smtp"]
    debian = judge(smtp={**smtp, "banner": "vps123.hoster.example ESMTP Postfix (Debian/GNU)"})
    assert debian["SMTP 25"][0] == "FAIL" and "myhostname" in debian["SMTP 25"][1]
    # A name old greeted with too is what the operator chose.
    old = {**OLD, "myhostname": "mx.example.org"}
    assert judge(old=old, smtp={**smtp, "banner": "mx.example.org ESMTP"})["SMTP 25"][0] == "PASS"
    plain = judge(smtp={**smtp, "starttls": False, "cert": None})["SMTP 25"]
    assert plain[0] == "FAIL" and "/etc/postfix/main.cf" in plain[1]
    assert judge(smtp={"error": "timeout"})["SMTP 25"][0] == "FAIL"
    assert judge(smtp={**smtp, "code": 554, "banner": "no"})["SMTP 25"][0] == "FAIL"
    # Postfix tempfails everything while its milter is gone: said on the SMTP line.
    gone = {"unix:opendkim/opendkim.sock": {"path": "/s", "exists": False, "answer": "x"}}
    tempfail = {**smtp, "starttls_error": "454 4.3.0 Try again later"}
    milter_down = judge(smtp=tempfail, milters=gone)
    assert milter_down["SMTP 25"][0] == milter_down["DKIM"][0] == "FAIL"
    assert "DKIM" in milter_down["SMTP 25"][1]  # the line that says what to fix
    milter_up = judge(smtp=tempfail)
    assert milter_up["SMTP 25"][0] == "FAIL" and "DKIM" not in milter_up["SMTP 25"][1]


def test_delivery_problems_fail():
    assert judge(lmtp={**PROBE["lmtp"], "known": 550})["accounts"][0] == "FAIL"
    assert judge(lmtp={**PROBE["lmtp"], "unknown": 250})["accounts"][0] == "WARN"
    assert judge(lmtp={"error": "FileNotFoundError: no socket"})["accounts"][0] == "FAIL"


def test_each_way_the_milter_can_be_unreachable_is_named():
    name = "unix:opendkim/opendkim.sock"
    path = "/var/spool/postfix/opendkim/opendkim.sock"
    # Each way names its fix: opendkim runs without its socket, or does not run.
    deleted = {name: {"path": path, "exists": False, "answer": "[Errno 2] No such file"}}
    dkim = judge(milters=deleted)["DKIM"]
    assert dkim[0] == "FAIL" and "systemctl restart opendkim" in dkim[1]
    stopped = STATE.replace("opendkim.service\n", "")
    dkim = judge(stopped, milters=deleted)["DKIM"]
    assert dkim[0] == "FAIL" and "systemctl start opendkim" in dkim[1]
    stale = {name: {"path": path, "exists": True, "answer": "[Errno 111] Connection refused"}}
    dkim = judge(stopped, milters=stale)["DKIM"]
    assert dkim[0] == "FAIL" and "systemctl start opendkim" in dkim[1]
    assert judge(milters={name: "ok"})["DKIM"][0] == "PASS"  # an answer without details
    assert judge(milters={})["DKIM"][0] == "FAIL"


def test_the_lab_opendkims_test_signature_verifies_with_the_published_key():
    signature = LAB_SIGNED["added"][0][1]
    assert dkim_verify(LAB_SIGNED["headers"], LAB_SIGNED["body"], signature, LAB_DKIM_KEY) is None
    changed = [list(h) for h in LAB_SIGNED["headers"]]
    changed[2][1] = "another subject"
    header_changed = dkim_verify(changed, LAB_SIGNED["body"], signature, LAB_DKIM_KEY)
    assert header_changed is not None and "body" not in header_changed
    body_changed = dkim_verify(LAB_SIGNED["headers"], "other\r\n", signature, LAB_DKIM_KEY)
    assert body_changed is not None and "body" in body_changed  # what differs
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    der = other.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    other_b64 = base64.b64encode(der).decode()
    assert dkim_verify(LAB_SIGNED["headers"], LAB_SIGNED["body"], signature, other_b64) is not None


def _split(raw: bytes) -> tuple[list[list[str]], str]:
    """A message's header fields (name, raw value with its folding) and body."""
    head, _, body = raw.decode().partition("\r\n\r\n")
    fields: list[list[str]] = []
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t"):
            fields[-1][1] += "\r\n" + line
        else:
            name, _, value = line.partition(":")
            fields.append([name, value])
    return fields, body


def _key_pair(algorithm: str) -> tuple[bytes, str]:
    """A private key as dkimpy takes it, and the public key as a DKIM record's p=."""
    if algorithm == "ed25519-sha256":
        key = ed25519.Ed25519PrivateKey.generate()
        raw = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(raw), base64.b64encode(public).decode()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, base64.b64encode(public).decode()


MESSAGE = (
    b"From: <postmaster@relay.example>\r\nTo: <a@relay.example>\r\n"
    b"Subject: a  test \t here\r\n  folded\r\nDate: Mon, 30 Nov 2026 06:18:23 +0000\r\n"
    b"\r\ntwo  spaces \r\n\r\n\r\n"
)
# What a relay or a list may do to a message in transit: some break a simple
# canonicalization and not a relaxed one, some break both.
MUTATIONS = {
    "untouched": lambda m: m,
    "body whitespace": lambda m: m.replace(b"two  spaces \r\n", b"two spaces\r\n"),
    "trailing empty lines": lambda m: m + b"\r\n\r\n",
    "header case and spaces": lambda m: m.replace(b"Subject: a  test", b"SUBJECT:a test"),
    "body word": lambda m: m.replace(b"two", b"three"),
    "subject word": lambda m: m.replace(b"here", b"there"),
}


@pytest.mark.parametrize("canon", ["simple/simple", "relaxed/relaxed", "relaxed/simple"])
@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_dkim_verdicts_agree_with_dkimpy(algorithm, canon):
    # dkimpy (test extra only) is the oracle: it signs, and it judges every mutation;
    # our verifier (check-relay's) must reach the same verdict on each.
    private, public = _key_pair(algorithm)
    header_c, body_c = canon.split("/")
    signed = dkim.sign(
        MESSAGE,
        b"opendkim",
        DOMAIN.encode(),
        private,
        canonicalize=(header_c.encode(), body_c.encode()),
        signature_algorithm=algorithm.encode(),
        include_headers=[b"From", b"Subject", b"Date"],
    )
    record = f"v=DKIM1; k={'ed25519' if algorithm.startswith('ed') else 'rsa'}; p={public}"
    verdicts = {}
    for mutation, change in MUTATIONS.items():
        message = change(signed + MESSAGE)
        fields, body = _split(message)
        signature = next(v for n, v in fields if n == "DKIM-Signature")
        headers = [f for f in fields if f[0] != "DKIM-Signature"]
        ours = dkim_verify(headers, body, signature, public) is None
        theirs = dkim.verify(message, dnsfunc=lambda *_, **__: record.encode())
        verdicts[mutation] = (ours, theirs)
    assert all(ours == theirs for ours, theirs in verdicts.values()), verdicts
    assert verdicts["untouched"] == (True, True)
    assert verdicts["body word"] == (False, False)
    assert dkim_tags(" v=1; p=ab cd\n\t ef; k=rsa") == {"v": "1", "p": "abcdef", "k": "rsa"}


def test_the_lab_opendkim_signature_verifies_with_dkimpy_too():
    # The real signature opendkim made in the lab, judged by the independent verifier.
    message = "".join(f"{n}:{v}\r\n" for n, v in LAB_SIGNED["added"] + LAB_SIGNED["headers"])
    message += "\r\n" + LAB_SIGNED["body"]
    record = f"v=DKIM1; k=rsa; p={LAB_DKIM_KEY}".encode()
    raw = message.replace("\r\n", "\n").replace("\n", "\r\n").encode()
    assert dkim.verify(raw, dnsfunc=lambda *_, **__: record)


def test_opendkims_key_must_be_the_published_one_and_what_it_signs_with():
    lines = judge(dns={DKIM_RECORD: {"servers": {"ns1 (192.0.2.53)": ["MIIBother"]}}})
    assert lines["DKIM key"][0] == "FAIL"
    assert "/etc/dkimkeys from old" in lines["DKIM key"][1]  # what to copy again
    missing = judge(dns={DKIM_RECORD: {"servers": {"ns1 (192.0.2.53)": []}}})["DKIM key"]
    assert missing[0] == "FAIL" and "/etc/dkimkeys/opendkim.txt" in missing[1]  # to publish
    # The running opendkim signs with a key it read before the file changed.
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    other_b64 = base64.b64encode(
        other.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).decode()
    stale = {
        **DKIM,
        "keys": [{**DKIM_KEY, "public": other_b64, "changed": NOW - 600}],
        "started": NOW - DAY,
    }
    lines = judge(dkim=stale, dns={DKIM_RECORD: {"servers": {"ns1": [other_b64]}}})
    status, detail = lines["DKIM key"]
    assert status == "FAIL" and "systemctl restart opendkim" in detail


def test_opendkim_problems_short_of_a_wrong_key():
    unsigned = {**DKIM, "signed": {**LAB_SIGNED, "added": [], "reply": "a"}}
    lines = judge(dkim=unsigned)
    assert lines["DKIM key"][0] == "FAIL" and "SigningTable" in lines["DKIM key"][1]
    no_socket = {**DKIM, "signed": {"error": "FileNotFoundError: [Errno 2] No such file"}}
    warned = judge(dkim=no_socket)["DKIM key"]
    assert warned[0] == "WARN" and DKIM["socket"] in warned[1]  # the socket to look at
    unasked = judge(dns={DKIM_RECORD: {"error": "nameserver ns1 did not answer in 3s"}})
    assert unasked["DKIM key"][0] == "WARN"
    assert "ns1 did not answer" in unasked["DKIM key"][1]  # why DNS could not be asked
    elsewhere = {**DKIM, "keys": [{**DKIM_KEY, "domain": "other.example"}]}
    assert judge(dkim=elsewhere)["DKIM key"][0] == "FAIL"
    unreadable = {**DKIM, "keys": [{**DKIM_KEY, "error": "Could not open file"}]}
    failed = judge(dkim=unreadable)["DKIM key"]
    assert failed[0] == "FAIL" and DKIM_KEY["path"] in failed[1]  # the file it cannot read


def test_an_ip_only_relay_signs_nothing():
    relay = Relay(mail_domain="192.0.2.1")
    lines = judge(relay=relay, milters={}, dkim=None)
    assert lines["DKIM"][0] == lines["DKIM key"][0] == "PASS"
    named = judge(milters={}, dkim=None)  # a relay with a domain: the same answer fails
    assert named["DKIM"][0] == named["DKIM key"][0] == "FAIL"


def test_queued_messages_are_found_by_message_id_or_envelope_and_in_the_mail_log():
    renamed = {**QUEUED_ON_OLD, "id": "NEWID"}
    no_id = {**QUEUED_ON_OLD, "id": "B1", "message_id": "", "sender": "b@x", "arrival": 5}
    delivered = {**QUEUED_ON_OLD, "id": "C1", "message_id": "<c@x>", "sender": "c@x", "size": 9}
    bounced = {**QUEUED_ON_OLD, "id": "D1", "message_id": "<d@x>", "sender": "d@x", "size": 7}
    gone = {**QUEUED_ON_OLD, "id": "E1", "message_id": "<e@x>", "sender": "e@x", "size": 11}
    log = {
        "from": [["Q9", "c@x", 9], ["Q8", "d@x", 7]],
        "to": [
            ["Q9", "someone@unreachable.invalid", "sent"],
            ["Q8", "someone@unreachable.invalid", "bounced"],
        ],
    }
    queued, sent, returned, missing = match_queue(
        [QUEUED_ON_OLD, no_id, delivered, bounced, gone],
        [renamed, {**no_id, "id": "B2"}],
        log,
    )
    assert queued == [QUEUED_ON_OLD, no_id]
    assert sent == [delivered]
    assert returned == [(bounced, "bounced")]
    assert missing == [gone]
    # One message on new accounts for one on old, not for two alike.
    twin = {**delivered, "id": "C2"}
    assert match_queue([delivered, twin], [], log)[3] == [twin]


def test_a_message_queued_on_old_and_lost_on_new_fails_naming_it():
    lines = judge(queue={"total": 0, "messages": []})
    assert lines["mail queue"][0] == "FAIL"
    assert QUEUED_ON_OLD["id"] in lines["mail queue"][1]  # the message to copy from old
    delivered = {
        "from": [["Q1", f"echo@{DOMAIN}", 385]],
        "to": [["Q1", "someone@unreachable.invalid", "sent"]],
    }
    lines = judge(queue={"total": 0, "messages": []}, deliveries=delivered)
    assert lines["mail queue"][0] == "PASS"
    bounced = {**delivered, "to": [["Q1", "someone@unreachable.invalid", "bounced"]]}
    assert judge(queue={"total": 0, "messages": []}, deliveries=bounced)["mail queue"][0] == "WARN"


def test_the_probe_accounts_login_and_listing():
    address = f"abcdefghi@{DOMAIN}"
    lines = judge(account=address, probe_account={"mailboxes": ["INBOX", "Trash"], "inbox": 2})
    assert lines["IMAP login"][0] == "PASS" and address in lines["IMAP login"][1]
    assert "IMAP login" not in judge(probe_account={"inbox": 2}), "only with --probe-account"
    refused = {
        "error": "login refused: [AUTHENTICATIONFAILED] Authentication failed.",
        "refused": True,
    }
    status, detail = judge(account=address, probe_account=refused)["IMAP login"]
    assert status == "FAIL" and "password file" in detail  # what to compare with old's
    # The account vanished between the task's check and the probe: no login either.
    gone = {"error": f"no account {address} on this host: not logged in"}
    assert judge(account=address, probe_account=gone)["IMAP login"][0] == "FAIL"


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
        "DKIM key",
        "mail queue",
    }


class FakeRunner:
    """A runner whose new host has the accounts in ``accounts`` (password files)."""

    def __init__(self, accounts=()):
        self.accounts = set(accounts)
        self.commands: list[str] = []
        self.dry = False

    def run(self, role, command, **kwargs):
        self.commands.append(command)
        exists = any(f"/{a}/password" in command for a in self.accounts)
        return Result("", "", 0 if exists else 1)


def settings(**kw) -> Settings:
    return Settings(mail_domain=DOMAIN, relay=RELAY, new_host="new", **kw)


def test_probe_account_refuses_addresses_without_an_account_before_any_login(monkeypatch):
    monkeypatch.setenv(relay_state.PROBE_PASSWORD_ENV, "secret-password")
    runner = FakeRunner([f"abcdefghi@{DOMAIN}"])
    # No password file on new: a login would create the account, so none is tried.
    with pytest.raises(SettingsError, match=f"newcomer1@{DOMAIN}/password"):
        check_relay.probe_password(settings(), runner, f"newcomer1@{DOMAIN}")
    assert len(runner.commands) == 1 and runner.commands[0].startswith("test -e ")
    # Not an address of this relay: refused here, the host is not even asked.
    for foreign in ("x@other.example", f"../x@{DOMAIN}/"):
        with pytest.raises(SettingsError, match="--probe-account"):
            check_relay.probe_password(settings(), runner, foreign)
    assert len(runner.commands) == 1
    assert check_relay.probe_password(settings(), runner, f"abcdefghi@{DOMAIN}") == (
        "secret-password"
    )
    monkeypatch.delenv(relay_state.PROBE_PASSWORD_ENV)
    monkeypatch.setattr("sys.stdin", SimpleNamespace(isatty=lambda: False))
    with pytest.raises(SettingsError, match=relay_state.PROBE_PASSWORD_ENV):  # what to set
        check_relay.probe_password(settings(), runner, f"abcdefghi@{DOMAIN}")


def test_the_password_goes_on_stdin_never_on_a_command_line(tmp_path, monkeypatch):
    """check-relay --probe-account, its host faked at the SSH channel: the password
    reaches the probe on its stdin, and no command, echoed line or log line."""
    password = "secret-password"
    address = f"abcdefghi@{DOMAIN}"
    params = probe_params(settings(), QUEUE, address, password)
    assert params["password"] == password and params["senders"] == [f"echo@{DOMAIN}"]
    monkeypatch.setenv(relay_state.PROBE_PASSWORD_ENV, password)
    monkeypatch.setattr(check_relay, "dkim_records", lambda settings, probe: {})
    monkeypatch.setattr(check_relay, "check_dns", lambda s, j: Check("PASS", "DNS", "-"))

    class Channel:
        def shutdown_write(self):
            pass

        def recv_exit_status(self):
            return 0

    class Stream:
        def __init__(self, data=b""):
            self.data, self.channel, self.written = data, Channel(), b""

        def write(self, data):
            self.written += data

        def flush(self):
            pass

        def read(self, size=-1):
            data, self.data = self.data, b""
            return data

    stdins: list[Stream] = []
    commands: list[str] = []

    def exec_command(command):
        commands.append(command)
        stdins.append(Stream())
        answer = {**PROBE, "probe_account": {"mailboxes": ["INBOX"], "inbox": 0}}
        return stdins[-1], Stream(f"{STATE}== probe\n{json.dumps(answer)}\n".encode()), Stream()

    class HostRunner(Runner):
        def run(self, role, command, **kwargs):  # the password file exists on new
            commands.append(command)
            return Result("", "", 0)

    echoed: list[str] = []
    s = settings(journal_dir=tmp_path)
    runner = HostRunner(s, echo=echoed.append)
    runner.connection = lambda role: SimpleNamespace(
        client=SimpleNamespace(exec_command=exec_command)
    )
    checks = check_relay.check_relay(s, runner, None, probe_account=address)
    assert {c.name: c.status for c in checks}["IMAP login"] == "PASS"
    assert len(stdins) == 1 and json.loads(stdins[0].written)["password"] == password
    assert commands and not any(password in c for c in commands)
    assert echoed and not any(password in line for line in echoed)
    log = (tmp_path / f"{DOMAIN}.log").read_text()
    assert "check-relay" in log and password not in log


def test_a_certificates_facts():
    facts = certificate_facts(certificate((DOMAIN, f"www.{DOMAIN}"), ca=True))
    assert facts["names"] == [DOMAIN, f"www.{DOMAIN}"]
    assert not facts["self_signed"]
    assert certificate_facts(certificate(()))["names"] == ["x"]  # no SAN: the CN


def test_the_key_opendkim_signed_with_is_the_one_judged():
    rotated = {**DKIM_KEY, "selector": "2025", "public": "MIIBretired"}
    lines = judge(dkim={**DKIM, "keys": [rotated, DKIM_KEY]})
    assert lines["DKIM key"][0] == "PASS" and DKIM_RECORD in lines["DKIM key"][1]


def test_disable_mail_records_olds_state_certificate_and_queue(tmp_path, monkeypatch):
    from chatmail_migrate.journal import Journal

    s = settings(journal_dir=tmp_path, old_host="old")
    journal = Journal.for_settings(s)
    state = STATE + f"== certificate\n{sha(CERT)}\n== myhostname\n{DOMAIN}\n"
    queue = {"total": 1, "messages": [QUEUED_ON_OLD]}
    sent: list[bytes] = []

    class Runner(FakeRunner):
        settings = s

        def host(self, role):
            return role

        def echo(self, line):
            pass

        def run(self, role, command, **kwargs):
            return Result(state, "", 0)

    runner = Runner()
    record_old.record_old_state(s, runner, journal)
    record = journal.services_before_disable()
    assert record["services"] == sorted(OLD["services"])
    assert record["certificate"]["sha256"] == sha(CERT)
    assert record["myhostname"] == DOMAIN

    def answer(runner, role, command, data, display):
        sent.append(data)
        return json.dumps(queue) + "\n"

    monkeypatch.setattr(record_old, "capture_text", answer)
    record_old.record_old_queue(s, runner, journal)
    assert json.loads(sent[0]) == {"mode": "queue", "limit": relay_state.QUEUE_RECORD_LIMIT}
    recorded = Journal.for_settings(s).queue_at_disable()
    assert recorded["messages"] == [QUEUED_ON_OLD] and recorded["total"] == 1
    # A rerun once mail is off keeps what was recorded while old served.
    state = state.replace("postfix@-.service\n", "").replace("dovecot.service\n", "")
    record_old.record_old_state(s, runner, journal)
    assert journal.services_before_disable()["services"] == sorted(OLD["services"])
