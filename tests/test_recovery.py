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

from .helpers import mail_services, run_tool
from .relay_client import RelayClient, pinned_context, relay_certificate
from .test_migrate import MAIL_OFF, MAIL_ON

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
    elsewhere = run_tool(lab, "invoke", *MIGRATE, "--old-host", "old", "--force",
                         state_dir=tmp_path / "other")  # fmt: skip
    assert elsewhere.returncode != 0
    assert mail_services(lab, "new") == MAIL_ON
    assert readable(lab, "new", bob, message_id)

    # Back to old while DNS points at new, as after a finished move: the journal's old
    # host, not DNS's; new's mail comes along. Then the move again, with that mail.
    nameserver.update(lab, a=[lab.address("new")])
    back = run_tool(lab, "invoke", "rollback", state_dir=tmp_path)
    assert back.returncode == 0, back.stdout + back.stderr
    assert "carried back" in back.stdout
    assert mail_services(lab, "old") == MAIL_ON
    assert mail_services(lab, "new") == MAIL_OFF
    assert readable(lab, "old", bob, message_id)
    nameserver.update(lab, a=[lab.address("old")])
    moved = run_tool(lab, "invoke", *MIGRATE, state_dir=tmp_path)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert readable(lab, "new", bob, message_id)


def test_rollback_carries_back_what_new_took(make_lab, tmp_path: Path):
    lab = make_lab(seed=SMALL)
    # enable-mail fails after new's services started: new serves, old is off.
    failed = run_tool(lab, "invoke", *MIGRATE, "--no-rollback", state_dir=tmp_path,
                      CHATMAIL_LAB_CMDEPLOY_FAIL="after@new:enable")  # fmt: skip
    assert failed.returncode != 0
    assert mail_services(lab, "new") == MAIL_ON
    status = run_tool(lab, "invoke", "status", state_dir=tmp_path)
    assert "The new host may have taken mail since" in status.stdout, status.stdout
    bob, message_id = send_and_read(lab, "new", "taken by new before the rollback")
    # A message bob read and deleted on new must not come back on old.
    alice = seeded_accounts(lab, "new")[0]
    conn = client(lab, "new").imap(alice, account_password(alice))
    conn.select("INBOX")
    _, found = conn.search(None, "ALL")
    first = found[0].split()[0]
    conn.store(first, "+FLAGS", "\\Deleted")
    conn.expunge()
    _, left = conn.search(None, "ALL")
    conn.logout()

    back = run_tool(lab, "invoke", "rollback", state_dir=tmp_path)
    assert back.returncode == 0, back.stdout + back.stderr
    assert "carried back" in back.stdout
    assert mail_services(lab, "old") == MAIL_ON
    assert mail_services(lab, "new") == MAIL_OFF
    assert readable(lab, "old", bob, message_id)
    conn = client(lab, "old").imap(alice, account_password(alice))
    conn.select("INBOX")
    assert conn.search(None, "ALL")[1] == left
    conn.logout()

    # Again: it reads the hosts, finds old serving and new stopped, and says so.
    second = run_tool(lab, "invoke", "rollback", state_dir=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "new host" in second.stdout and "stopped" in second.stdout
    assert mail_services(lab, "old") == MAIL_ON
    assert mail_services(lab, "new") == MAIL_OFF

    # A colleague without the journal, DNS (wrongly) at new: no deploy on new.
    nameserver.update(lab, a=[lab.address("new")])
    blind = run_tool(lab, "invoke", "rollback", state_dir=tmp_path / "colleague")
    assert blind.returncode != 0
    assert "--old-host" in blind.stderr and "--new-host" in blind.stderr
    assert mail_services(lab, "new") == MAIL_OFF
    named = run_tool(lab, "invoke", "rollback", "--old-host", "old", "--new-host", "new",
                     state_dir=tmp_path / "colleague")  # fmt: skip
    assert named.returncode == 0, named.stderr
    assert "point" in named.stdout and lab.address("old") in named.stdout  # DNS back
    assert mail_services(lab, "old") == MAIL_ON
    assert mail_services(lab, "new") == MAIL_OFF
    assert readable(lab, "old", bob, message_id)
