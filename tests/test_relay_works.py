"""The lab relay serves mail for real, before and after a migration: IMAP over TLS on
993, submission on 465 with SASL, delivery to a mailbox by LMTP, DKIM signing with the
key the lab's DNS publishes. Clients reach the hosts by their lab addresses only.

Then check-relay on the moved relay: each FAIL line provoked once on purpose, in turn on
the one migrated lab (each fault undone before the next), named as it should be; and
check-relay creates no account, --probe-account included."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from chatmail_migrate.lab import SeedParams
from chatmail_migrate.lab.seed import account_password, seeded_accounts
from tests.helpers import run_tool
from tests.relay_client import (
    RelayClient,
    assert_refuses_strangers,
    assert_relay_serves,
    pinned_context,
    relay_certificate,
)


def test_seeded_relay_serves_mail_and_so_does_new_after_migrate(make_lab, tmp_path: Path):
    lab = make_lab(seed=SeedParams(accounts=3, messages=2))
    alice, bob = seeded_accounts(lab)[:2]
    # The certificate old serves, pinned: after the move new must serve the same one.
    context = pinned_context(relay_certificate(lab, "old"))
    old = RelayClient(lab.address("old"), lab.domain, context)
    before = assert_relay_serves(lab, old, alice, bob)
    # A first login creates an account, as chatmail's doveauth does.
    newcomer = f"newcomer1@{lab.domain}"
    old.imap(newcomer, account_password(newcomer)).logout()
    assert lab.ssh("old", f"ls /home/vmail/mail/{lab.domain}/{newcomer}/password").returncode == 0
    # Last: Dovecot slows an address's logins after a wrong password.
    assert_refuses_strangers(old, alice)
    # A second message waits in old's queue beside the seed's: the move carries both.
    lab.ssh(
        "old",
        f"printf 'Subject: second\\n\\nwaits too\\n' | sendmail -f echo@{lab.domain} "
        "someone@second.invalid",
    )
    queued_on_old = wait_for_queue(lab, "old", 2)

    result = run_tool(
        lab,
        "invoke",
        "migrate",
        "--old-host",
        "old",
        "--new-host",
        "new",
        "--yes",
        "--no-wait",
        state_dir=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    # migrate ends with check-relay: new does what old did before disable-mail.
    assert "check-relay passed" in result.stdout
    for name in (
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
    ):
        assert f"PASS  {name}: " in result.stdout, name
    assert f"PASS  SMTP 25: 220 {lab.domain}; STARTTLS offered, the certificate copied" in (
        result.stdout
    )
    assert (
        "PASS  DKIM key: opendkim signs with /etc/dkimkeys/opendkim.private, the key DNS "
        f"publishes at opendkim._domainkey.{lab.domain}"
    ) in result.stdout
    assert (
        "PASS  mail queue: all 2 messages queued on old at disable-mail are on new: 2 queued, "
        "0 delivered"
    ) in result.stdout
    record = json.loads((tmp_path / "chatmail-migrate" / f"{lab.domain}.json").read_text())
    before_disable = [e for e in record["events"] if e["event"] == "before-disable-mail"]
    assert {"postfix@-.service", "dovecot.service"} <= set(before_disable[-1]["services"])
    assert {"25", "465", "993"} <= set(before_disable[-1]["listening"])

    with pytest.raises(ConnectionRefusedError):
        old.imap(alice, account_password(alice))
    new = RelayClient(lab.address("new"), lab.domain, context)
    # What old delivered is on new, under the same passwords (the account created
    # by a first login too), and new signs with the key DNS still publishes.
    message_id = next(
        line.split(":", 1)[1].strip()
        for line in before.decode().split("\r\n")
        if line.lower().startswith("message-id:")
    )
    assert new.fetch(bob, account_password(bob), message_id, wait=0) == before
    new.imap(newcomer, account_password(newcomer)).logout()
    assert_relay_serves(lab, new, bob, alice)
    assert_refuses_strangers(new, alice)

    check_relay_names_what_broke(lab, tmp_path, bob, queued_on_old)


def wait_for_queue(lab, host: str, count: int) -> list[dict]:
    """Postfix's queue on ``host`` once it holds ``count`` messages, each deferred."""
    deadline = time.monotonic() + 30
    while True:
        out = lab.ssh(host, "postqueue -j").stdout
        items = [json.loads(line) for line in out.splitlines() if line.strip()]
        if len(items) == count and all(i["queue_name"] == "deferred" for i in items):
            return items
        assert time.monotonic() < deadline, f"{host}'s queue: {items}"
        lab.ssh(host, "postqueue -f")
        time.sleep(0.5)


def mailbox_tree(lab) -> str:
    """The accounts on new: the names in the mailbox directory, each password file's hash."""
    base = f"/home/vmail/mail/{lab.domain}"
    return lab.ssh("new", f"cd {base} && ls -A && sha256sum */password").stdout


def check_relay(lab, state_dir: Path, *args: str, **env: str):
    return run_tool(lab, "fab", "-H", "new", "check-relay", *args, state_dir=state_dir, **env)


def failing(result) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("FAIL")]


def check_relay_names_what_broke(lab, state_dir: Path, account: str, queued_on_old):
    tree = mailbox_tree(lab)
    # A login and a folder listing as an existing account, its password from the
    # environment: it logs in, and never shows up in the output or the command log.
    password = account_password(account)
    probed = check_relay(
        lab, state_dir, "--probe-account", account, CHATMAIL_PROBE_PASSWORD=password
    )
    assert probed.returncode == 0, probed.stdout
    assert f"PASS  IMAP login: {account} logged in over IMAP 993: " in probed.stdout
    assert "INBOX holds" in probed.stdout
    log = (state_dir / "chatmail-migrate" / f"{lab.domain}.log").read_text()
    assert password not in log + probed.stdout + probed.stderr
    # An address without an account: refused before any login (which would create it).
    stranger = f"newcomer2@{lab.domain}"
    refused = check_relay(
        lab,
        state_dir,
        "--probe-account",
        stranger,
        CHATMAIL_PROBE_PASSWORD=account_password(stranger),
    )
    assert refused.returncode == 2
    assert f"error: --probe-account {stranger}: no such account on new" in refused.stderr
    assert "PASS" not in refused.stdout

    # opendkim stopped: its service is missing, and Postfix's milter does not answer.
    lab.ssh("new", "systemctl stop opendkim")
    broken = check_relay(lab, state_dir)
    assert broken.returncode == 1
    assert (
        "FAIL  services: ran on old before disable-mail, not running on new: opendkim.service"
    ) in broken.stdout
    assert (
        "FAIL  DKIM: Postfix's milter unix:opendkim/opendkim.sock does not answer: no socket "
        "/var/spool/postfix/opendkim/opendkim.sock, opendkim does not run: `systemctl start "
        "opendkim` on new"
    ) in broken.stdout
    # Postfix tempfails while its milter is gone: other servers cannot deliver either.
    assert "FAIL  SMTP 25: STARTTLS fails: 454 4.3.0 " in broken.stdout
    assert "PASS  IMAP 993: " in broken.stdout
    assert "check-relay: 3 check(s) failed (services: " in broken.stderr
    lab.ssh("new", "systemctl start opendkim")

    # The milter socket deleted while opendkim runs.
    lab.ssh("new", "rm /var/spool/postfix/opendkim/opendkim.sock")
    broken = check_relay(lab, state_dir)
    assert broken.returncode == 1
    assert "services" not in " ".join(failing(broken))
    assert (
        "FAIL  DKIM: Postfix's milter unix:opendkim/opendkim.sock does not answer: its socket "
        "/var/spool/postfix/opendkim/opendkim.sock is gone while opendkim runs (deleted?): "
        "`systemctl restart opendkim` on new makes it again"
    ) in broken.stdout
    lab.ssh("new", "systemctl restart opendkim")

    # Another self-signed certificate for the domain in place of the copied one.
    live = f"/var/lib/acme/live/{lab.domain}"
    lab.ssh(
        "new",
        f"cp -L {live}/fullchain /root/fullchain.copied && "
        f"cp -L {live}/privkey /root/privkey.copied && "
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
        f"-days 90 -subj /CN={lab.domain} -addext subjectAltName=DNS:{lab.domain} "
        f"-keyout $(readlink -f {live}/privkey) -out $(readlink -f {live}/fullchain) "
        "2>/dev/null && systemctl reload dovecot postfix",
    )
    broken = check_relay(lab, state_dir)
    assert broken.returncode == 1
    assert [line.split(":")[0] for line in failing(broken)] == [
        "FAIL  IMAP 993",
        "FAIL  submission 465",
        "FAIL  certificate",
        "FAIL  SMTP 25",
    ]
    assert "FAIL  IMAP 993: serves another certificate (SHA-256 " in broken.stdout
    assert "than the certificate copied from old" in broken.stdout
    assert (
        f"FAIL  certificate: {live}/fullchain is not the certificate old had at disable-mail"
    ) in broken.stdout
    lab.ssh(
        "new",
        f"cp /root/fullchain.copied $(readlink -f {live}/fullchain) && "
        f"cp /root/privkey.copied $(readlink -f {live}/privkey) && "
        "systemctl reload dovecot postfix",
    )

    # A relay service other than opendkim stopped: Dovecot.
    lab.ssh("new", "systemctl stop dovecot")
    broken = check_relay(lab, state_dir)
    assert broken.returncode == 1
    assert (
        "FAIL  services: ran on old before disable-mail, not running on new: dovecot.service; "
        "see `systemctl status dovecot.service` on new"
    ) in broken.stdout
    assert "FAIL  IMAP 993: no TLS session: ConnectionRefusedError" in broken.stdout
    # Postfix's smtpd for 465 died without Dovecot's auth socket ("bad command startup
    # -- throttling"): Postfix serves it again once restarted, or after 60 s.
    lab.ssh("new", "systemctl start dovecot && systemctl restart postfix")

    # The queue: one message old held is delivered on new (a transport that discards
    # it), the other removed from new's queue: only that one is named, by old's ID.
    lab.ssh(
        "new",
        "postconf -e 'transport_maps = inline:{second.invalid=discard:}' && "
        "postfix reload && postqueue -f",
    )
    left = wait_for_queue(lab, "new", 1)
    lab.ssh("new", f"postsuper -d {left[0]['queue_id']}")
    first, second = sorted(queued_on_old, key=lambda m: "second" in str(m["recipients"]))
    broken = check_relay(lab, state_dir)
    assert broken.returncode == 1
    [line] = failing(broken)
    assert line.startswith(
        "FAIL  mail queue: 1 of 2 messages queued on old at disable-mail are neither queued on "
        f"new nor delivered there (0 queued, 1 delivered): {first['queue_id']} (from "
        f"echo@{lab.domain}, <"
    ), line
    assert second["queue_id"] not in line
    assert "check-relay: 1 check(s) failed (mail queue: " in broken.stderr
    # None of it made or changed an account on new.
    assert mailbox_tree(lab) == tree
