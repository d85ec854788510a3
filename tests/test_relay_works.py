"""The lab relay serves mail for real, before and after a migration: IMAP over TLS on
993, submission on 465 with SASL, delivery to a mailbox by LMTP, DKIM signing with the
key the lab's DNS publishes. Clients reach the hosts by their lab addresses only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatmail_migrate.lab import SeedParams
from chatmail_migrate.lab.seed import account_password, seeded_accounts

from .helpers import run_tool
from .relay_client import (
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

    result = run_tool(lab, "invoke", "migrate", "--old-host", "old", "--new-host", "new",
                      "--yes", "--no-wait", state_dir=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    # migrate ends with check-relay: new does what old did before disable-mail.
    assert "check-relay passed" in result.stdout
    for name in ("services", "ports", "IMAP 993", "submission 465", "certificate", "SMTP 25",
                 "accounts", "DKIM", "mail queue"):  # fmt: skip
        assert f"PASS  {name}: " in result.stdout, name
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

    # check-relay by hand finds what broke, and says so in its exit code.
    lab.ssh("new", "systemctl stop opendkim")
    broken = run_tool(lab, "fab", "-H", "new", "check-relay", state_dir=tmp_path)
    assert broken.returncode == 1
    assert (
        "FAIL  services: ran on old before disable-mail, not running on new: opendkim.service"
    ) in broken.stdout
    assert "FAIL  DKIM: Postfix's milter unix:opendkim/opendkim.sock does not answer" in (
        broken.stdout
    )
    assert "PASS  IMAP 993: " in broken.stdout
    assert "check-relay: 2 check(s) failed (services: " in broken.stderr
