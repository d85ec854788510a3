"""Recovery never loses mail: reruns, restarts and rollbacks after new took mail.

Issue 22, items 1-3. Each scenario is what an operator types after a move finished,
or after enable-mail failed with new already serving; the mail new received in
between is followed by Message-ID until it is readable again on the host that
serves.
"""

from __future__ import annotations

from pathlib import Path

from chatmail_migrate.lab import Lab, SeedParams, nameserver
from chatmail_migrate.lab.seed import account_password, seeded_accounts
from tests.helpers import mail_services, run_tool
from tests.relay_client import RelayClient, assert_relay_serves, pinned_context, relay_certificate
from tests.test_migrate import MAIL_OFF, MAIL_ON

SMALL = SeedParams(version="1.10.0", accounts=4, messages=2)
MIGRATE = ["migrate", "--new-host", "new", "--yes", "--no-wait"]


def client(lab: Lab, host: str) -> RelayClient:
    return RelayClient(lab.address(host), lab.domain, pinned_context(relay_certificate(lab, host)))


def send_and_read(lab: Lab, host: str, subject: str) -> tuple[str, str]:
    """A message from one seeded account to another, through ``host``, read there."""
    alice, bob = seeded_accounts(lab, host)[:2]
    relay = client(lab, host)
    message_id = relay.send(alice, account_password(alice), bob, subject)
    relay.fetch(bob, account_password(bob), message_id)
    return bob, message_id


def inbox_ids(lab: Lab, host: str, user: str) -> list[str]:
    """The Message-IDs in ``user``'s INBOX on ``host``, sorted."""
    conn = client(lab, host).imap(user, account_password(user))
    try:
        conn.select("INBOX")
        _, data = conn.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    finally:
        conn.logout()
    ids = [part[1].decode().split(":", 1)[1].strip() for part in data if isinstance(part, tuple)]
    return sorted(ids)


def serves_signed(lab: Lab, host: str) -> None:
    """Mail goes through ``host`` signed with the key DNS publishes (opendkim answers)."""
    alice, bob = seeded_accounts(lab, host)[:2]
    assert_relay_serves(lab, client(lab, host), alice, bob)


def assert_rolled_back_with(lab: Lab, result, user: str, message_id: str) -> None:
    """The rollback carried new's mail back: old serves it, signed; new is stopped."""
    assert result.returncode == 0, result.stdout + result.stderr
    assert "carried back" in result.stdout
    assert mail_services(lab, "old") == MAIL_ON
    assert mail_services(lab, "new") == MAIL_OFF
    assert readable(lab, "old", user, message_id)
    serves_signed(lab, "old")


def readable(lab: Lab, host: str, user: str, message_id: str) -> bool:
    try:
        client(lab, host).fetch(user, account_password(user), message_id, wait=5)
    except AssertionError:
        return False
    return True


def test_a_finished_move_is_never_copied_over(make_lab, tmp_path: Path):
    lab = make_lab(seed=SMALL)
    done = run_tool(lab, "invoke", *MIGRATE, state_dir=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    bob, message_id = send_and_read(lab, "new", "taken by new after the move")

    restart = run_tool(lab, "invoke", *MIGRATE, "--restart", state_dir=tmp_path)
    assert restart.returncode != 0
    assert len(restart.stderr.strip().splitlines()) == 1, restart.stderr
    assert "rollback" in restart.stderr  # names the safe ways
    again = run_tool(lab, "invoke", *MIGRATE, state_dir=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "finished" in again.stdout and "status" in again.stdout
    assert "preflight" not in again.stdout  # nothing was run
    # From another state directory (no journal), the host decides: it serves.
    elsewhere = run_tool(
        lab, "invoke", *MIGRATE, "--old-host", "old", "--force", state_dir=tmp_path / "other"
    )
    assert elsewhere.returncode != 0
    assert "new is no live relay: new runs postfix and dovecot" in elsewhere.stdout
    assert mail_services(lab, "new") == MAIL_ON
    assert readable(lab, "new", bob, message_id)

    # Back to old while DNS points at new, as after a finished move: the journal's old
    # host, not DNS's; new's mail comes along, and old signs again (the carry back
    # replaced the spool that holds opendkim's socket).
    nameserver.update(lab, a=[lab.address("new")])
    back = run_tool(lab, "invoke", "rollback", state_dir=tmp_path)
    assert_rolled_back_with(lab, back, bob, message_id)
    # The move again, failing after new's services started: the automatic rollback
    # carries new's mail back too, and old serves it, signed.
    nameserver.update(lab, a=[lab.address("old")])
    failed = run_tool(
        lab, "invoke", *MIGRATE, state_dir=tmp_path, CHATMAIL_LAB_CMDEPLOY_FAIL="after@new:enable"
    )
    assert failed.returncode != 0
    assert "with the mail the new host took carried back" in failed.stderr, failed.stderr
    assert mail_services(lab, "old") == MAIL_ON
    assert mail_services(lab, "new") == MAIL_OFF
    assert readable(lab, "old", bob, message_id)
    serves_signed(lab, "old")


def test_rollback_carries_back_what_new_took(make_lab, tmp_path: Path):
    lab = make_lab(seed=SMALL)
    # enable-mail fails after new's services started: new serves, old is off.
    failed = run_tool(
        lab,
        "invoke",
        *MIGRATE,
        "--no-rollback",
        state_dir=tmp_path,
        CHATMAIL_LAB_CMDEPLOY_FAIL="after@new:enable",
    )
    assert failed.returncode != 0
    assert mail_services(lab, "new") == MAIL_ON
    status = run_tool(lab, "invoke", "status", state_dir=tmp_path)
    assert "The new host may have taken mail since" in status.stdout, status.stdout
    bob, message_id = send_and_read(lab, "new", "taken by new before the rollback")
    # A message read and deleted on new must not come back on old.
    alice = seeded_accounts(lab, "new")[0]
    before = inbox_ids(lab, "new", alice)
    conn = client(lab, "new").imap(alice, account_password(alice))
    conn.select("INBOX")
    conn.store("1", "+FLAGS", "\\Deleted")
    conn.expunge()
    conn.logout()
    left = inbox_ids(lab, "new", alice)
    assert len(left) == len(before) - 1

    back = run_tool(lab, "invoke", "rollback", state_dir=tmp_path)
    assert_rolled_back_with(lab, back, bob, message_id)
    assert inbox_ids(lab, "old", alice) == left

    # Again: it reads the hosts, finds old serving and new stopped, and changes nothing.
    second = run_tool(lab, "invoke", "rollback", state_dir=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "already serves mail and the new host new is stopped: nothing to roll back" in (
        second.stdout
    )
    assert "carried back" not in second.stdout and "cmdeploy" not in second.stdout
    assert mail_services(lab, "old") == MAIL_ON
    assert mail_services(lab, "new") == MAIL_OFF

    # A colleague without the journal, DNS (wrongly) at new: no deploy on new, and the
    # new host is asked for, not assumed.
    nameserver.update(lab, a=[lab.address("new")])
    colleague = tmp_path / "colleague"
    blind = run_tool(lab, "invoke", "rollback", state_dir=colleague)
    assert blind.returncode == 2
    assert "--old-host" in blind.stderr and "--new-host" in blind.stderr
    half = run_tool(lab, "invoke", "rollback", "--old-host", "old", state_dir=colleague)
    assert half.returncode == 2 and "give --new-host NEW" in half.stderr
    swapped = run_tool(
        lab, "invoke", "rollback", "--old-host", "new", "--new-host", "old", state_dir=colleague
    )
    assert swapped.returncode != 0
    assert mail_services(lab, "new") == MAIL_OFF
    named = run_tool(
        lab, "invoke", "rollback", "--old-host", "old", "--new-host", "new", state_dir=colleague
    )
    assert named.returncode == 0, named.stderr
    assert "point DNS back" in named.stdout and lab.address("old") in named.stdout
    assert mail_services(lab, "old") == MAIL_ON
    assert mail_services(lab, "new") == MAIL_OFF
    assert readable(lab, "old", bob, message_id)
